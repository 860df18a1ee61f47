; irqbench -- interrupt delivery benchmark: PIT period 2000 TSC ticks (mode 2),
; a busy loop with interrupts on until 20000 timer interrupts have been taken
; (each handler sends EOI), then exit code 0.
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x20, timer_handler
        lidt [idtr]
        mov al, 0x34
        out 0x43, al
        mov ax, 2000
        out 0x40, al
        mov al, ah
        out 0x40, al
        sti
.busy:  cmp qword [rel ticks], 20000
        jb .busy
        cli
        exit 0
timer_handler:
        push rax
        inc qword [rel ticks]
        mov al, 0x20
        out 0x20, al
        pop rax
        iretq
align 16
idtr:   dw 256 * 16 - 1
        dq idt
align 4096
idt:    times 256 * 16 db 0
ticks:  dq 0                    ; data on its own page, not the code page
