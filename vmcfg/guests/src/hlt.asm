; hlt -- prints a line and halts with interrupts off: nothing can wake it, so
; the run ends with status "halted" (after a HLT exit under hlt_exiting).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "hlt: halting", 10
        cli
        hlt
        print "hlt: woke up", 10
        exit 1
