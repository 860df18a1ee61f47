; wild32 -- a 32-bit guest (paging off) that reads guest-physical 0xF0000000,
; far outside its RAM: the run ends with an error and a register dump.
bits 32
org 0x100000
start:
        mov eax, 0x11111111
        mov ebx, 0xF0000000
        mov ecx, [ebx]
        mov al, 1
        out 0xF4, al
        hlt
