; msr -- RDMSR/WRMSR: reads IA32_TSC, IA32_APIC_BASE and IA32_PAT, writes and
; reads back IA32_TSC_AUX, then reads an MSR the virtual CPU lacks (#GP,
; caught by the guest's own IDT handler).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 13, gp_handler
        lidt [idtr]
        print "msr: apic_base "
        mov ecx, 0x1B
        rdmsr
        shl rdx, 32
        or rax, rdx
        call puthex
        call newline
        print "msr: pat "
        mov ecx, 0x277
        rdmsr
        shl rdx, 32
        or rax, rdx
        call puthex
        call newline
        mov ecx, 0xC0000103
        mov eax, 0x1234
        xor edx, edx
        wrmsr
        rdmsr
        print "msr: tsc_aux "
        call puthex
        call newline
        print "msr: unknown 0x12345 -> "
        mov ecx, 0x12345
        rdmsr
        print "no fault", 10
        exit 1
gp_handler:
        print "#GP", 10
        exit 0

align 4096
idt:    times 256 * 16 db 0
idtr:   dw 256 * 16 - 1
        dq idt
