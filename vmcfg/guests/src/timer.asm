; timer -- periodic interrupts from the PIT through the 8259 PIC, an NMI handler.
; Installs an IDT (vector 0x20: PIT/IRQ0, vector 2: NMI, vector 0x40: a software
; or live interrupt), programs the PIC (vector base 0x20) and PIT channel 0
; (mode 2, 5000 TSC ticks), then:
;   phase 1: STI and a busy loop until 3 timer interrupts have arrived;
;   phase 2: HLT until 6 have arrived (the CPU waits in virtual time);
;   phase 3: CLI, a loop over 3 timer periods, STI: exactly one more interrupt
;            (missed periods collapse in the PIC's IRR), taken after the STI shadow.
; Each timer interrupt sends a non-specific EOI.  Prints the counts; the exit code
; is the number of interrupts phase 3 saw (1 when the guest takes them itself).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

start:
        gate 0x20, timer_handler
        gate 2, nmi_handler
        gate 0x40, soft_handler
        lidt [idtr]
        pic_init
        xor al, al                      ; IMR: all unmasked
        out 0x21, al
        mov al, 0x34                    ; PIT ch0, lobyte/hibyte, mode 2
        out 0x43, al
        mov ax, 5000
        out 0x40, al
        mov al, ah
        out 0x40, al
        sti
.busy:  cmp qword [rel ticks], 3
        jb .busy
.idle:  hlt
        cmp qword [rel ticks], 6
        jb .idle
        cli
        mov rbx, [rel ticks]
        mov ecx, 7500                   ; 2 instructions per iteration: 3 periods
.masked:
        dec ecx
        jnz .masked
        sti
        nop                             ; the STI shadow: no interrupt before this one
        nop
        cli
        mov rax, [rel ticks]
        sub rax, rbx
        mov [rel phase3], rax
        print "timer: ticks="
        mov rax, [rel ticks]
        call puthex
        print " nmis="
        mov rax, [rel nmis]
        call puthex
        print " soft="
        mov rax, [rel softs]
        call puthex
        call newline
        mov al, [rel phase3]
        out DEBUG_EXIT, al
        hlt

timer_handler:
        push rax
        inc qword [rel ticks]
        mov al, 0x20                    ; non-specific EOI
        out 0x20, al
        pop rax
        iretq
nmi_handler:
        inc qword [rel nmis]
        iretq
soft_handler:
        inc qword [rel softs]
        iretq

align 16
idtr:   dw 256 * 16 - 1
        dq idt

align 4096
idt:    times 256 * 16 db 0
ticks:  dq 0                    ; data on its own page, not the code page
nmis:   dq 0
softs:  dq 0
phase3: dq 0
