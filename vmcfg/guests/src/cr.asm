; cr -- control-register accesses: reads CR0/CR3/CR4/CR8, writes each back
; unchanged, CLTS and LMSW.  Prints the values it reads (read shadows show here).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "cr: cr0 "
        mov rax, cr0
        call puthex
        call newline
        mov rax, cr0
        mov cr0, rax
        print "cr: cr4 "
        mov rax, cr4
        call puthex
        call newline
        mov cr4, rax
        print "cr: cr3 "
        mov rax, cr3
        call puthex
        call newline
        mov cr3, rax
        print "cr: cr8 "
        mov rax, cr8
        call puthex
        call newline
        mov cr8, rax
        clts
        smsw ax
        lmsw ax
        print "cr: done", 10
        exit 0
