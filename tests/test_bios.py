"""The minimal real-mode BIOS: IVT default handlers for the hardware IRQ vectors (EOI + IRET),
an IRET for every other vector, PIC vector bases 0x08/0x70, the ACPI RSDP left in place."""

from __future__ import annotations

import json

# Programs the PIT (periodic, ~1 ms) and the pc-testdev's IRQ 11 line, enables interrupts and
# installs no handler of its own.  Exit code bits, each a check that passed:
#   1  five HLTs woken by IRQ 0: the default handler at vector 0x08 sent the EOI each time
#   2  IRQ 11 (vector 0x73) taken and acknowledged at both PICs: both ISRs read back 0
#   4  INT 0x21 (a software interrupt, no hardware vector) returns through the IRET stub
#   8  IVT entries 0x08 and 0x70 are far pointers into the BIOS area F000:xxxx
#  16  the ACPI RSDP signature is still at 0xF0000
GUEST = """\
BITS 16
org 0x7c00
start:
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
  xor bx, bx                    ; the exit code
  mov al, 0x34                  ; PIT channel 0, mode 2, ~1 ms
  out 0x43, al
  mov al, 0xa9
  out 0x40, al
  mov al, 0x04
  out 0x40, al
  sti
  mov cx, 5
wait_timer:
  hlt
  loop wait_timer
  or bx, 1
  cli
  mov al, 1                     ; IRQ 11 up and down through the pc-testdev
  mov dx, 0x200b
  out dx, al
  xor al, al
  out dx, al
  sti
  hlt                           ; IRQ 11 (or IRQ 0) wakes it
  nop
  cli
  mov al, 0x0b                  ; OCW3: read ISR
  out 0x20, al
  out 0xa0, al
  in al, 0xa0
  mov ah, al
  in al, 0x20
  or al, ah
  jnz .no_isr
  or bx, 2
.no_isr:
  int 0x21
  or bx, 4
  cmp word [0x08 * 4 + 2], 0xf000
  jne .no_ivt
  cmp word [0x70 * 4 + 2], 0xf000
  jne .no_ivt
  or bx, 8
.no_ivt:
  mov ax, 0xf000
  mov es, ax
  cmp dword [es:0], 0x20445352  ; "RSD "
  jne .done
  cmp dword [es:4], 0x20525450  ; "PTR "
  jne .done
  or bx, 16
.done:
  mov al, bl
  out 0xf4, al
  hlt
"""


def test_a_real_mode_guest_takes_irqs_through_the_bios_default_handlers(tmp_path, cli):
    g = tmp_path / "bios.asm"
    g.write_text(GUEST)
    r = cli("launch", "real-mode", "--guest", str(g), "--mode", "16", "--load-address", "0x7c00",
            "--memory", "2M", "--timeout", "60", "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc["message"]
    assert doc["guest_exit_code"] == 31


def test_the_bios_is_only_for_real_mode_and_multiboot_guests(tmp_path, cli):
    """A 64-bit flat image keeps the zeroed low memory (no IVT)."""
    g = tmp_path / "ivt.asm"
    g.write_text("BITS 64\nmov eax, [0x08 * 4]\nor eax, [0x70 * 4]\ntest eax, eax\nsetnz al\n"
                 "out 0xf4, al\nhlt\n")
    r = cli("launch", "baseline", "--guest", str(g), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc["message"]
    assert doc["guest_exit_code"] == 0
