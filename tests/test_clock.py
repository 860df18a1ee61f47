"""--clock virtual|realtime and the TSC frequency a guest is told (CPUID 0x15/0x16)."""

import json

from vmcfg.profile import resolve
from vmcfg.vmm.clock import TSC_HZ
from vmcfg.vmm.vcpu import Vcpu


def _cpuid(profile, leaf):
    r = resolve(profile, cpu="cvmm")
    v = Vcpu(r.config, memory=1 << 20, mode=64)
    return v.cpuid.query(leaf, 0), v


def test_cpuid_reports_the_profile_tsc_frequency():
    (a, b, c, _d), v = _cpuid("linux", 0x15)
    assert c * b // a == 1_000_000_000 == v.tsc_hz            # linux: tsc.frequency = 1 GHz
    assert _cpuid("linux", 0x16)[0][0] == 1000                 # base MHz
    (a, b, c, _d), v = _cpuid("baseline", 0x15)
    assert c * b // a == TSC_HZ == v.tsc_hz                  # default: the machine clock
    assert _cpuid("baseline", 0)[0][0] >= 0x16                 # the leaves are in range
    assert _cpuid("baseline", 0x80000007)[0][3] & (1 << 8)     # invariant TSC


def test_virtual_clock_is_deterministic_and_realtime_runs_the_same_guest(cli):
    runs = [json.loads(cli("launch", "baseline", "--guest", "builtin:timer", "--json").stdout)
            for _ in range(2)]
    assert runs[0]["tsc"] == runs[1]["tsc"] and runs[0]["console"] == runs[1]["console"]
    assert runs[0]["exits"] == runs[1]["exits"]
    rt = json.loads(cli("launch", "baseline", "--guest", "builtin:timer", "--clock", "realtime",
                        "--json").stdout)
    # the timer guest counts PIT interrupts and exits through port 0xF4 under either clock
    assert rt["status"] == "debug-exit" and rt["console"].startswith("timer: ticks=")


RTC_MONTH_GUEST = """\
bits 64
org 0x100000
        mov al, 8                       ; CMOS month (BCD)
        out 0x70, al
        in al, 0x71
        out 0xf4, al                    ; the run's exit value
        hlt
"""


def test_the_rtc_starts_at_a_fixed_date_on_virtual_time_and_at_the_host_date_on_realtime(
        tmp_path):
    """A run on virtual time takes nothing from the host: the date the guest reads is
    2026-01-01 on every run (a Linux boot prints it: the two runs' consoles must agree);
    on realtime it is the host's UTC date."""
    import time

    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    g = tmp_path / "month.asm"
    g.write_text(RTC_MONTH_GUEST)
    cfg = resolve("baseline", cpu="cvmm").config
    img = load_image(str(g), load_address=0x100000, mode=64)
    months = {}
    for clock in ("virtual", "realtime"):
        before = time.gmtime().tm_mon
        res = run_guest(cfg, img, memory=16 << 20, mode=64, clock=clock, timeout=60)
        assert res.status == "debug-exit", res.message
        months[clock] = (res.guest_exit_code, {int(f"{before:02d}", 16),
                                                int(f"{time.gmtime().tm_mon:02d}", 16)})
    assert months["virtual"][0] == 0x01
    assert months["realtime"][0] in months["realtime"][1]
