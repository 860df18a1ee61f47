; hello32 -- a 32-bit protected-mode guest (paging off): prints and exits 0.
bits 32
org 0x100000
start:
        mov esi, msg
.next:  lodsb
        test al, al
        jz .done
        mov dx, 0x3F8
        out dx, al
        jmp .next
.done:  cpuid
        mov al, 0
        out 0xF4, al
        hlt
msg:    db "hello from 32-bit protected mode", 10, 0
