; preempt -- a busy loop of 100000 iterations, then HLT.  Under the VMX-preemption
; timer the loop is sliced by PREEMPTION_TIMER exits and the halted guest wakes
; when the timer fires (the default handler re-arms it).  Ends with exit code 0.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        mov ecx, 100000
.loop:  dec ecx
        jnz .loop
        print "preempt: loop done", 10
        hlt
        print "preempt: woke from hlt", 10
        exit 0
