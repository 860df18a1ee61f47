"""The PC platform seen from a guest: the bundled `platform` guest, reset and power-off."""

from __future__ import annotations

import json

import pytest


def _run(guest, *, serial_input=None, mode=64, memory=16 << 20, max_instructions=5_000_000):
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    cfg = resolve("baseline", cpu="cvmm").config
    img = load_image(guest, load_address=0x100000, mode=mode)
    return run_guest(cfg, img, memory=memory, mode=mode, max_instructions=max_instructions,
                     serial_input=serial_input)


CHECKS = ["fw_cfg signature QEMU", "fw_cfg NB_CPUS 1", "ACPI RSDP found, checksum valid",
          "CMOS extended memory 15 MiB", "LAPIC one-shot timer fired, current count 0",
          "x2APIC ID 0", "x2APIC self IPI delivered", "TSC-deadline timer fired, MSR cleared",
          "PIT interrupt through the IOAPIC"]


def test_platform_guest_sees_every_device_and_receives_serial_input():
    res = _run("builtin:platform", serial_input=b"ping")
    assert res.status == "debug-exit", res.message
    lines = res.console.splitlines()
    for c in CHECKS:
        assert f"platform: {c} ok" in lines
    assert "platform: serial input 'ping'" in lines
    assert res.guest_exit_code == 0
    assert res.exits == []                      # baseline: the devices need no VM exit


def test_platform_guest_without_serial_input_receives_nothing():
    res = _run("builtin:platform")
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert "platform: serial input ''" in res.console.splitlines()


def _asm(tmp_path, body: str) -> str:
    p = tmp_path / "g.asm"
    p.write_text("BITS 64\n" + body)
    return str(p)


@pytest.mark.parametrize("body, status, code", [
    ("mov al, 0xfe\nout 0x64, al\nhlt\n", "reboot", 14),
    ("mov al, 0x06\nmov dx, 0xcf9\nout dx, al\nhlt\n", "reboot", 14),
    ("mov ax, 0x2000\nmov dx, 0x604\nout dx, ax\nhlt\n", "poweroff", 0),
])
def test_reset_and_acpi_poweroff_end_the_run(tmp_path, cli, body, status, code):
    r = cli("launch", "baseline", "--guest", _asm(tmp_path, body), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == status and r.exit_code == code
    assert doc["exit_status"] == code


def test_serial_input_option_feeds_the_uart(tmp_path, cli):
    f = tmp_path / "in.txt"
    f.write_bytes(b"xyz")
    r = cli("launch", "baseline", "--guest", "builtin:platform", "--serial-input", str(f),
            "--json")
    assert r.exit_code == 0, r.stderr             # debug-exit 0: the guest's checks passed
    assert "platform: serial input 'xyz'" in json.loads(r.stdout)["console"]
    r = cli("launch", "baseline", "--guest", "builtin:platform", "--serial-input",
            str(tmp_path / "missing"))
    assert r.exit_code == 2 and "--serial-input" in r.stderr and "Traceback" not in r.stderr


CR8_TPR = """BITS 64
mov ecx, 0x1B
rdmsr
or eax, 0x400
wrmsr
mov rax, 5
mov cr8, rax
mov ecx, 0x808
rdmsr
mov ebx, eax
mov eax, 0x70
xor edx, edx
wrmsr
mov rax, cr8
add eax, ebx
out 0xf4, al
hlt
"""


@pytest.mark.parametrize("profile", ["baseline", "trap-all"])
def test_cr8_is_the_local_apic_tpr(tmp_path, cli, profile):
    """MOV to CR8 sets TPR[7:4] (read back through the x2APIC TPR MSR) and MOV from CR8
    reads what WRMSR put there, whether the CR8 accesses exit (trap-all) or not."""
    p = tmp_path / "cr8.asm"
    p.write_text(CR8_TPR)
    r = cli("launch", profile, "--guest", str(p), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit" and doc["guest_exit_code"] == 0x57


APIC_OFF = """BITS 64
mov ecx, 0x1B
rdmsr
and eax, 0xFFFFF7FF
wrmsr
mov eax, 1
cpuid
mov ebx, edx
shr ebx, 9
and ebx, 1
mov rdi, 0xFEE00000
mov eax, [rdi + 0x30]
cmp eax, 0xFFFFFFFF
sete al
shl al, 1
or al, bl
movzx esi, al
mov ecx, 0x1B
rdmsr
or eax, 0x800
wrmsr
mov eax, 1
cpuid
shr edx, 9
and edx, 1
shl edx, 2
or esi, edx
mov eax, esi
out 0xf4, al
hlt
"""


def test_disabling_the_apic_clears_cpuid_apic_and_removes_its_page(tmp_path, cli):
    """IA32_APIC_BASE.EN = 0: CPUID.1:EDX.APIC reads 0 and the xAPIC page reads all ones;
    EN = 1 again: CPUID reports it (exit code bits: 2 = page gone, 4 = CPUID back)."""
    p = tmp_path / "off.asm"
    # the 4 KiB page at 0xFEE00000 is reached through a 2 MiB mapping the guest makes
    p.write_text(APIC_OFF.replace("mov rdi, 0xFEE00000", _MAP + "\nmov rdi, 0xFEE00000"))
    r = cli("launch", "baseline", "--guest", str(p), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc["message"]
    assert doc["guest_exit_code"] == 2 | 4     # CPUID bit clear while off, page gone, back on


# a page directory for the 4th GiB at 0x80000, with a 2 MiB page for 0xFEE00000
_MAP = """mov rax, 0x80003
mov [0x2000 + 3 * 8], rax
mov rax, 0xFEE00093
mov [0x80000 + 0x1F7 * 8], rax
mov rax, cr3
mov cr3, rax"""
