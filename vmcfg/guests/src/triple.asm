; triple -- raises #UD with no IDT: the exception cannot be delivered, the
; double fault cannot either, and the guest triple-faults.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "triple: ud2 without an IDT", 10
        ud2
        exit 1
