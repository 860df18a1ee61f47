; selftest -- checks what the controls make visible and reports through the
; debug-exit port: exit code 0 = all checks passed, else a bit per failed check.
;   bit 0  TSC offset: RDTSC >= 0x100000000000 (profile: tsc.offset = 0x100000000000)
;   bit 1  CR0 read shadow: MOV from CR0 shows CD (bit 30) set (cr0.mask = shadow = CD),
;          although the real CR0.CD is 0 (a write of CR0 with CD=1 would exit)
;   bit 2  MSR bitmap pass-through: RDMSR of IA32_TSC_AUX (not intercepted) costs
;          fewer TSC ticks than one VM exit, RDMSR of IA32_PAT (intercepted) more
;   bit 3  CPUID override: leaf 0x40000001 ebx = 0xC0FFEE ([cpuid."0x40000001"])
;   bit 4  hypervisor leaf: CPUID 0x40000000 names "vmcfg cvmm"
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        xor r15d, r15d                  ; failed checks
        ; ---- 0: TSC offset
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov rbx, 0x100000000000
        cmp rax, rbx
        jae .t0ok
        or r15d, 1
        print "selftest: FAIL tsc offset", 10
        jmp .t1
.t0ok:  print "selftest: pass tsc offset", 10
        ; ---- 1: CR0 shadow
.t1:    mov rax, cr0
        bt rax, 30
        jc .t1ok
        or r15d, 2
        print "selftest: FAIL cr0 shadow", 10
        jmp .t2
.t1ok:  print "selftest: pass cr0 shadow", 10
        ; ---- 2: MSR bitmap pass-through vs intercept, measured with the TSC
.t2:    mov ecx, 0xC0000103
        rdtsc
        mov r8d, eax
        mov ecx, 0xC0000103
        rdmsr
        rdtsc
        sub eax, r8d
        mov r9d, eax                    ; cost of a pass-through RDMSR
        rdtsc
        mov r8d, eax
        mov ecx, 0x277
        rdmsr
        rdtsc
        sub eax, r8d
        mov r10d, eax                   ; cost of an intercepted RDMSR
        cmp r9d, 1000
        jae .t2bad
        cmp r10d, 1000
        jb .t2bad
        print "selftest: pass msr bitmap", 10
        jmp .t3
.t2bad: or r15d, 4
        print "selftest: FAIL msr bitmap", 10
        ; ---- 3: CPUID override
.t3:    mov eax, 0x40000001
        cpuid
        cmp ebx, 0xC0FFEE
        je .t3ok
        or r15d, 8
        print "selftest: FAIL cpuid override", 10
        jmp .t4
.t3ok:  print "selftest: pass cpuid override", 10
        ; ---- 4: hypervisor leaf
.t4:    mov eax, 0x40000000
        cpuid
        cmp ebx, 'vmcf'
        jne .t4bad
        cmp ecx, 'g cv'
        jne .t4bad
        cmp edx, 'mm'
        jne .t4bad
        print "selftest: pass hypervisor leaf", 10
        jmp .done
.t4bad: or r15d, 16
        print "selftest: FAIL hypervisor leaf", 10
.done:  test r15d, r15d
        jnz .fail
        print "selftest: all passed", 10
        exit 0
.fail:  mov eax, r15d
        out DEBUG_EXIT, al
        hlt
