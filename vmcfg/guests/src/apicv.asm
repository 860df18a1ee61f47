; apicv -- the local APIC's task priority and interrupts through the x2APIC MSRs: TPR,
; self IPIs below and above the TPR class, EOI.  The same checks pass on the plain local
; APIC and under APIC virtualization (virtualize x2APIC mode, APIC-register
; virtualization, virtual-interrupt delivery: README "APIC virtualization"), where the
; TPR, SELF IPI and EOI MSRs go to the virtual-APIC page instead.  Prints what it sees;
; exit code = number of failed checks (0 = all passed).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

; check CONDITION-JUMP, "name" -- print "name ok" or "name FAIL" (and count it)
%macro check 2+
        %1 %%ok
        inc dword [rel fails]
        print "apicv: ", %2, " FAIL", 10
        jmp %%done
%%ok:   print "apicv: ", %2, " ok", 10
%%done:
%endmacro

; wrmsr32 MSR, VALUE
%macro wrmsr32 2
        mov ecx, %1
        mov eax, %2
        xor edx, edx
        wrmsr
%endmacro

start:
        gate 0x51, isr51
        gate 0x61, isr61
        lidt [rel idtr]
        mov ecx, 0x1B                   ; IA32_APIC_BASE: x2APIC mode
        rdmsr
        or eax, 0xC00
        wrmsr
        wrmsr32 0x80F, 0x1FF            ; SVR: software-enable the APIC
        wrmsr32 0x808, 0x50             ; TPR class 5
        mov ecx, 0x808
        rdmsr
        cmp eax, 0x50
        check je, "TPR reads back 0x50"
        sti
        wrmsr32 0x83F, 0x51             ; SELF IPI 0x51: class 5, held back by the TPR
        nop
        cmp dword [rel count51], 0
        check je, "vector 0x51 waits while TPR is 0x50"
        wrmsr32 0x83F, 0x61             ; SELF IPI 0x61: class 6, taken at once
        nop
        cmp dword [rel count61], 1
        check je, "vector 0x61 taken above the TPR"
        wrmsr32 0x808, 0                ; TPR 0: 0x51 is taken now
        nop
        cmp dword [rel count51], 1
        check je, "vector 0x51 taken after TPR 0"
        cli
        mov eax, [rel fails]
        out DEBUG_EXIT, al
        hlt

isr51:  inc dword [rel count51]
        jmp eoi
isr61:  inc dword [rel count61]
eoi:    push rax
        push rcx
        push rdx
        wrmsr32 0x80B, 0                ; EOI
        pop rdx
        pop rcx
        pop rax
        iretq

align 4
fails:   dd 0
count51: dd 0
count61: dd 0
idtr:   dw 256 * 16 - 1
        dq idt
align 16
idt:    times 256 * 16 db 0
