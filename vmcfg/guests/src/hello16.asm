; hello16 -- a 16-bit real-mode boot sector (load it at 0x7c00): prints and exits 0.
bits 16
org 0x7c00
start:
        mov si, msg
.next:  lodsb
        test al, al
        jz .done
        mov dx, 0x3F8
        out dx, al
        jmp .next
.done:  xor eax, eax
        cpuid
        mov al, 0
        out 0xF4, al
        hlt
msg:    db "hello from 16-bit real mode", 10, 0
