; movss -- blocking by MOV SS: an interrupt must never be delivered between a
; MOV SS and the instruction after it.  A PIT with a short period (30 TSC ticks)
; interrupts a loop of "mov ss, ax / nop" 200 times; the interrupt handler
; counts the interrupts whose return address is the NOP (taken inside the MOV SS
; shadow).  Prints both counts; the exit code is the number of violations (0).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

start:
        gate 0x20, handler
        lidt [idtr]
        pic_init
        xor al, al
        out 0x21, al
        mov al, 0x34                    ; PIT ch0, mode 2, period 30 ticks
        out 0x43, al
        mov al, 30
        out 0x40, al
        xor al, al
        out 0x40, al
        mov ax, ss
        sti
mloop:  mov ss, ax
after:  nop
        cmp qword [rel ticks], 200
        jb mloop
        cli
        print "movss: interrupts "
        mov rax, [rel ticks]
        call puthex
        print ", inside the MOV SS shadow "
        mov rax, [rel bad]
        call puthex
        call newline
        mov al, [rel bad]
        out DEBUG_EXIT, al
        hlt

handler:
        push rax
        mov rax, [rsp + 8]              ; the interrupted RIP
        cmp rax, after
        jne .ok
        inc qword [rel bad]
.ok:    inc qword [rel ticks]
        mov al, 0x20                    ; non-specific EOI
        out 0x20, al
        pop rax
        iretq

align 16
idtr:   dw 256 * 16 - 1
        dq idt
ticks:  dq 0
bad:    dq 0
align 4096
idt:    times 256 * 16 db 0
