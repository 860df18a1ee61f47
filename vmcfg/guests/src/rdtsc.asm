; rdtsc -- reads the TSC twice around 100 instructions and prints both values
; and the difference (TSC offsetting/scaling and RDTSC exiting change them).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r12, rax
        mov ecx, 50
.spin:  dec ecx
        jnz .spin
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r13, rax
        print "rdtsc: first  "
        mov rax, r12
        call puthex
        call newline
        print "rdtsc: second "
        mov rax, r13
        call puthex
        call newline
        print "rdtsc: delta  "
        mov rax, r13
        sub rax, r12
        call puthex
        call newline
        exit 0
