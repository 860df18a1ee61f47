; exceptions -- installs an IDT and raises #UD (UD2), #BP (INT3), #DE (DIV by 0)
; and #PF (a read of 1 GiB, above the identity map); each handler prints the
; vector and skips the faulting instruction.  Intercepting an exception in the
; profile shows it as an EXCEPTION_NMI exit; the default handler reflects it.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

start:
        gate 0, de_handler
        gate 3, bp_handler
        gate 6, ud_handler
        gate 14, pf_handler
        lidt [idtr]
        ud2
        int3
        xor edx, edx
        xor ecx, ecx
        mov eax, 1
        div ecx
        mov rax, [0x40000000]
        print "exceptions: done", 10
        exit 0
ud_handler:
        print "exceptions: #UD", 10
        add qword [rsp], 2
        iretq
bp_handler:
        print "exceptions: #BP", 10
        iretq
de_handler:
        print "exceptions: #DE", 10
        add qword [rsp], 2              ; div ecx is 2 bytes
        iretq
pf_handler:
        print "exceptions: #PF cr2="
        mov rax, cr2
        call puthex
        print " error="
        mov rax, [rsp]
        call puthex
        call newline
        add rsp, 8
        add qword [rsp], 8              ; mov rax, [abs32] is 8 bytes
        iretq

align 4096
idt:    times 256 * 16 db 0
idtr:   dw 256 * 16 - 1
        dq idt
