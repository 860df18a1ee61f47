; exits-all -- one of every instruction kind the VMM can trap, each announced on
; the console first.  Exceptions (#UD from UD2, #BP from INT3) go to the
; guest's own IDT handlers, which skip the instruction.  Under any profile the
; guest computes the same results; only the exits differ.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

start:
        gate 6, ud_handler
        gate 3, bp_handler
        lidt [idtr]
        print "cpuid", 10
        xor eax, eax
        cpuid
        print "rdtsc", 10
        rdtsc
        print "rdpmc", 10
        xor ecx, ecx
        rdpmc
        print "rdmsr", 10
        mov ecx, 0x1B
        rdmsr
        print "wrmsr", 10
        mov ecx, 0xC0000103
        xor eax, eax
        xor edx, edx
        wrmsr
        print "in/out", 10
        in al, 0x80
        out 0x80, al
        print "mov cr", 10
        mov rax, cr0
        mov cr0, rax
        mov rax, cr4
        mov cr4, rax
        mov rax, cr3
        mov cr3, rax
        mov rax, cr8
        mov cr8, rax
        print "clts/lmsw", 10
        clts
        smsw ax
        lmsw ax
        print "mov dr", 10
        mov rax, dr7
        mov dr7, rax
        print "invlpg", 10
        invlpg [0x200000]
        print "wbinvd/invd", 10
        wbinvd
        invd
        print "descriptor tables", 10
        sgdt [gdtr_save]
        lgdt [gdtr_save]
        sidt [idtr_save]
        lidt [idtr_save]
        sldt ax
        str ax
        print "pause", 10
        pause
        print "rdrand/rdseed", 10
        rdrand rax
        rdseed rax
        print "monitor/mwait", 10
        lea rax, [rel idtr_save]
        xor ecx, ecx
        xor edx, edx
        monitor
        mwait
        print "xsetbv", 10
        mov rax, cr4                    ; XSETBV needs CR4.OSXSAVE (else #UD)
        bts rax, 18
        mov cr4, rax
        xor ecx, ecx
        mov eax, 3
        xor edx, edx
        xsetbv
        print "vmcall", 10
        xor eax, eax
        vmcall
        print "ud2", 10
        ud2
        print "int3", 10
        int3
        print "hlt", 10
        hlt
        exit 0                          ; reached only when something wakes the HLT
ud_handler:
        add qword [rsp], 2
        iretq
bp_handler:
        iretq

align 4096
idt:    times 256 * 16 db 0
idtr:   dw 256 * 16 - 1
        dq idt
gdtr_save: dw 0
        dq 0
idtr_save: dw 0
        dq 0
