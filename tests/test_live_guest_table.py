"""Applying a profile to a running guest leaves the [guest] table it was launched with alone
unless the applied profile writes it (profile/transaction.py): `vmcfg apply trap-all` to a
guest launched from the `linux` profile (256 MiB) is not a request for 16 MiB."""

import json
import subprocess
import sys

from conftest import PATIENCE, ROOT


def vmcfg(*args):
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=PATIENCE)


def test_apply_trap_all_to_a_guest_launched_from_linux(rundir, write_profile):
    r = vmcfg("launch", "linux", "--guest", "builtin:soak", "--name", "lg", "--detach")
    assert r.returncode == 0, r.stderr
    try:
        r = vmcfg("apply", "trap-all", "--to", "lg", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        keys = [d["key"] for d in doc["diff"]]
        assert doc["applied"] and "primary.rdtsc_exiting" in keys
        assert not [k for k in keys if k.startswith("guest.")]
        # a profile that writes another memory size is still refused, and says why
        mem = write_profile('[profile]\nextends = "linux"\n[guest]\nmemory = "32M"\n')
        r = vmcfg("apply", mem, "--to", "lg")
        assert r.returncode == 1 and "guest.memory" in r.stderr and "new guest" in r.stderr
        r = vmcfg("apply", "--rollback", "--to", "lg", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        vmcfg("stop", "lg")


def test_the_running_guest_is_compared_as_it_was_launched(rundir):
    """--memory on the command line is the running guest's memory: `linux` (256 MiB) applies
    to a baseline guest launched with --memory 256M, and is refused for one with 16 MiB."""
    r = vmcfg("launch", "baseline", "--guest", "builtin:soak", "--memory", "256M",
              "--name", "big", "--detach")
    assert r.returncode == 0, r.stderr
    r = vmcfg("launch", "baseline", "--guest", "builtin:soak", "--name", "small", "--detach")
    assert r.returncode == 0, r.stderr
    try:
        r = vmcfg("apply", "linux", "--to", "big", "--json")
        assert r.returncode == 0, r.stderr
        keys = [d["key"] for d in json.loads(r.stdout)["diff"]]
        assert "secondary.enable_ept" in keys and not [k for k in keys if k.startswith("guest.")]
        r = vmcfg("apply", "linux", "--to", "small")
        assert r.returncode == 1 and "guest.memory" in r.stderr
    finally:
        vmcfg("stop", "big")
        vmcfg("stop", "small")
