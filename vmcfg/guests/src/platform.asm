; platform -- the PC platform as a guest sees it: fw_cfg, the ACPI RSDP, the local
; APIC timer (xAPIC MMIO, one-shot), an x2APIC self-IPI, the TSC-deadline timer,
; the PIT through the IOAPIC, CMOS memory size, and the UART's receive interrupt
; (when the launcher queues serial input).  Maps the APIC pages itself (the VMM's
; page tables cover RAM only).  Prints what it sees; exit code = number of failed
; checks (0 = all passed).
bits 64
org 0x100000
        jmp start
%include "lib64.inc"

%define LAPIC 0xFEE00000
%define IOAPIC 0xFEC00000

; check CONDITION-JUMP, "name" -- print "name ok" or "name FAIL" (and count it)
%macro check 2+
        %1 %%ok
        inc dword [rel fails]
        print "platform: ", %2, " FAIL", 10
        jmp %%done
%%ok:   print "platform: ", %2, " ok", 10
%%done:
%endmacro

start:
        ; --- map 0xFEC00000 and 0xFEE00000 (2 MiB pages, uncached) through PDPT[3]
        lea rax, [rel pd3]
        or rax, 3
        mov [0x2000 + 3 * 8], rax
        lea rdi, [rel pd3]
        mov rax, 0xFEC00000 | 0x93
        mov [rdi + 0x1F6 * 8], rax
        mov rax, 0xFEE00000 | 0x93
        mov [rdi + 0x1F7 * 8], rax
        mov rax, cr3
        mov cr3, rax
        gate 0x40, lapic_timer
        gate 0x41, self_ipi
        gate 0x42, deadline
        gate 0x43, pit_irq
        gate 0x44, serial_rx
        gate 0xFF, spurious
        lidt [rel idtr]
        mov al, 0xFF                    ; PICs: mask everything, the APICs take over
        out 0x21, al
        out 0xA1, al

        ; --- fw_cfg: signature and CPU count
        mov dx, 0x510
        xor ax, ax
        out dx, ax
        mov dx, 0x511
        xor ebx, ebx
        mov ecx, 4
.sig:   in al, dx
        shl ebx, 8
        mov bl, al
        loop .sig
        cmp ebx, 0x51454D55             ; "QEMU" read in order, shifted in: Q E M U
        check je, "fw_cfg signature QEMU"
        mov dx, 0x510
        mov ax, 5
        out dx, ax
        mov dx, 0x511
        in al, dx
        cmp al, 1
        check je, "fw_cfg NB_CPUS 1"

        ; --- the ACPI RSDP in the BIOS area, with a valid checksum
        mov rsi, 0xE0000
.scan:  mov rax, 'RSD PTR '
        cmp [rsi], rax
        je .found
        add rsi, 16
        cmp rsi, 0x100000
        jb .scan
.found: xor eax, eax
        xor ecx, ecx
.sum:   add al, [rsi + rcx]
        inc ecx
        cmp ecx, 20
        jb .sum
        cmp rsi, 0x100000
        setb ah
        test al, al
        sete al
        and al, ah
        cmp al, 1
        check je, "ACPI RSDP found, checksum valid"

        ; --- CMOS: KiB of extended memory (0x17/0x18)
        mov al, 0x18
        out 0x70, al
        in al, 0x71
        mov bh, al
        mov al, 0x17
        out 0x70, al
        in al, 0x71
        mov bl, al
        cmp bx, 15 * 1024               ; 16 MiB of RAM: 15 MiB above 1 MiB
        check je, "CMOS extended memory 15 MiB"

        ; --- local APIC (xAPIC MMIO): software enable, one-shot timer, vector 0x40
        mov rdi, LAPIC
        mov dword [rdi + 0xF0], 0x1FF
        mov dword [rdi + 0x3E0], 0x0B   ; divide by 1
        mov dword [rdi + 0x320], 0x40   ; one-shot
        mov dword [rdi + 0x380], 5000
        sti
.w1:    hlt
        cmp dword [rel n_timer], 0
        je .w1
        cli
        mov eax, [rdi + 0x390]
        test eax, eax
        check jz, "LAPIC one-shot timer fired, current count 0"

        ; --- x2APIC: enable, self IPI 0x41 through MSR 0x83F
        mov ecx, 0x1B
        rdmsr
        or eax, 1 << 10
        wrmsr
        mov ecx, 0x802
        rdmsr
        test eax, eax
        check jz, "x2APIC ID 0"
        mov ecx, 0x83F
        mov eax, 0x41
        xor edx, edx
        wrmsr
        sti
        nop
        cli
        cmp dword [rel n_ipi], 1
        check je, "x2APIC self IPI delivered"

        ; --- TSC-deadline timer, vector 0x42
        mov ecx, 0x832
        mov eax, (2 << 17) | 0x42
        xor edx, edx
        wrmsr
        rdtsc
        shl rdx, 32
        or rax, rdx
        add rax, 3000
        mov rdx, rax
        shr rdx, 32
        mov ecx, 0x6E0
        wrmsr
        sti
.w2:    hlt
        cmp dword [rel n_deadline], 0
        je .w2
        cli
        mov ecx, 0x6E0
        rdmsr
        or eax, edx
        check jz, "TSC-deadline timer fired, MSR cleared"

        ; --- the PIT through the IOAPIC: GSI 2 -> vector 0x43
        mov rdi, IOAPIC
        mov dword [rdi], 0x10 + 2 * 2
        mov dword [rdi + 0x10], 0x43
        mov dword [rdi], 0x11 + 2 * 2
        mov dword [rdi + 0x10], 0
        mov al, 0x30                    ; channel 0, mode 0, lobyte/hibyte
        out 0x43, al
        mov al, 0x00
        out 0x40, al
        mov al, 0x10
        out 0x40, al
        sti
.w3:    hlt
        cmp dword [rel n_pit], 0
        je .w3
        cli
        check jmp, "PIT interrupt through the IOAPIC"

        ; --- serial input (if the launcher queued any): RX interrupt on IRQ 4 -> 0x44
        mov dword [rdi], 0x10 + 2 * 4
        mov dword [rdi + 0x10], 0x44
        mov dx, COM1 + 1
        mov al, 1                       ; IER: received data available
        out dx, al
        sti
        mov ecx, 200000
.w4:    cmp dword [rel n_rx], 0
        jne .got
        dec ecx
        jnz .w4
.got:   cli
        print "platform: serial input '"
        lea rsi, [rel rxbuf]
        call puts
        print "'", 10

        print "platform: failed checks "
        mov eax, [rel fails]
        call put8
        call newline
        mov al, [rel fails]
        out DEBUG_EXIT, al
        hlt

lapic_timer:
        inc dword [rel n_timer]
        jmp eoi_mmio
self_ipi:
        inc dword [rel n_ipi]
        jmp eoi_x2
deadline:
        inc dword [rel n_deadline]
        jmp eoi_x2
pit_irq:
        inc dword [rel n_pit]
        jmp eoi_x2
serial_rx:
        push rax
        push rdx
        push rbx
        mov dx, COM1 + 5
.more:  in al, dx
        test al, 1
        jz .done
        mov dx, COM1
        in al, dx
        mov ebx, [rel n_rx]
        cmp ebx, 60
        jae .skip
        lea rdx, [rel rxbuf]
        mov [rdx + rbx], al
        inc dword [rel n_rx]
.skip:  mov dx, COM1 + 5
        jmp .more
.done:  pop rbx
        pop rdx
        pop rax
        jmp eoi_x2
spurious:
        iretq
eoi_mmio:
        push rax
        mov rax, LAPIC
        mov dword [rax + 0xB0], 0
        pop rax
        iretq
eoi_x2:
        push rax
        push rcx
        push rdx
        mov ecx, 0x80B
        xor eax, eax
        xor edx, edx
        wrmsr
        pop rdx
        pop rcx
        pop rax
        iretq

align 8
fails:      dd 0
n_timer:    dd 0
n_ipi:      dd 0
n_deadline: dd 0
n_pit:      dd 0
n_rx:       dd 0
rxbuf:      times 64 db 0
idtr:   dw 256 * 16 - 1
        dq idt
align 4096
pd3:    times 512 dq 0
idt:    times 256 * 16 db 0
