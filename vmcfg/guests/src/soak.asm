; soak -- a guest that never ends on its own, for live reconfiguration.
; It prints one line, then loops forever; every iteration executes exactly
; seven instructions, one RDTSC and one OUT to port 0x80 (the POST port):
;
;   .loop:  inc rcx            ; iteration number n
;           mov rax, rcx
;           imul rax, rcx
;           add rbx, rax       ; checksum: rbx = 1^2 + 2^2 + ... + n^2 (mod 2^64)
;           rdtsc              ; exits with primary.rdtsc_exiting
;           out 0x80, al       ; exits when port 0x80 is intercepted
;           jmp .loop
;
; So the guest computes the same checksum under any profile, and the number
; of RDTSC and I/O exits in any window of instructions can be predicted
; exactly from the instruction counts.  End it with `vmcfg stop NAME` (the
; final summary shows RCX and RBX) or --max-instructions.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "soak: looping (rdtsc + out 0x80 per iteration)", 10
        xor ecx, ecx
        xor ebx, ebx
        align 16
loop_top:
        inc rcx
        mov rax, rcx
        imul rax, rcx
        add rbx, rax
        rdtsc
        out 0x80, al
        jmp loop_top
