; runaway -- prints one line and spins forever (for --max-instructions / --timeout).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "runaway: spinning", 10
.spin:  inc rax
        jmp .spin
