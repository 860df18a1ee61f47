; io -- port I/O: IN from an empty port, OUT to port 0x80, a REP OUTSB of a
; string to COM1, and reads of the LSR.  Prints what it reads.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "io: in 0x80 -> "
        in al, 0x80
        movzx eax, al
        call put8
        call newline
        mov al, 0x42
        out 0x80, al
        mov dx, 0x3FD
        in al, dx
        movzx eax, al
        print "io: lsr -> "
        call put8
        call newline
        lea rsi, [rel msg]
        mov rcx, msglen
        mov dx, COM1
        cld
        rep outsb
        exit 0
msg:    db "io: hello from rep outsb", 10
msglen equ $ - msg
