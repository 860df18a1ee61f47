; compute -- an exit-free compute loop for benchmarks: 20 million iterations of
; integer arithmetic with a store to a data page, then prints the checksum
; and exits with code 0.  Code and data live on separate pages.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        mov rcx, 20000000
        mov rbx, data
        mov rax, 0x12345678
.loop:  imul rax, rax, 6364136223846793005 & 0x7fffffff
        add rax, rcx
        xor [rbx], rax
        dec rcx
        jnz .loop
        print "compute: checksum "
        mov rax, [rbx]
        call puthex
        call newline
        exit 0
align 4096
data:   dq 0
