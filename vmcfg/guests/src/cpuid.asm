; cpuid -- executes CPUID (an unconditional exit) and prints what it reads:
; the vendor, the hypervisor leaf 0x40000000 and leaf 1.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "cpuid: vendor "
        xor eax, eax
        cpuid
        mov eax, ebx
        call put4chars
        mov eax, edx
        call put4chars
        mov eax, ecx
        call put4chars
        call newline
        print "cpuid: hypervisor "
        mov eax, 0x40000000
        cpuid
        mov eax, ebx
        call put4chars
        mov eax, ecx
        call put4chars
        mov eax, edx
        call put4chars
        call newline
        print "cpuid: leaf 1 eax="
        mov eax, 1
        cpuid
        push rcx
        call put8
        print " ecx="
        pop rax
        call put8
        call newline
        exit 0
