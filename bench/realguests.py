"""kvm-unit-tests images under vmcfg and under QEMU TCG, side by side.

    .venv/bin/python bench/realguests.py [--shared DIR | --images DIR] [--only NAME,...]
                                         [--jobs N] [--timeout S] [--no-qemu] [--markdown]

Unpacks the tarball of ``DIR`` (default ``../shared/kvm-unit-tests`` next to
the checkout) into a temporary directory -- or, with ``--images DIR``, takes
the ``*.flat`` files of a directory as they are (e.g. the ``x86/`` directory
of a kvm-unit-tests build) -- and runs every image with the
profile of that directory's README (``vmcfg launch kut.toml --guest T.flat
--mode 32 --memory 256M --timeout S --json``) and, when
``qemu-system-x86_64`` is on PATH, with QEMU TCG as kvm-unit-tests' own
``x86/run`` does.  Each run is judged the way kvm-unit-tests' runner judges
QEMU's exit status ``(value << 1) | 1``: debug-exit value 0 (QEMU status 1) = PASS,
value 38 (QEMU status 77) = SKIP, anything else = FAIL, with the last console
line and the vmcfg status.

Not a test: nothing here asserts anything; it prints a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_shared() -> str:
    """``shared/kvm-unit-tests`` beside the checkout (or beside one of its parents, as for a
    git worktree under the project directory)."""
    d = ROOT
    for _ in range(3):
        d = os.path.dirname(d)
        cand = os.path.join(d, "shared", "kvm-unit-tests")
        if os.path.isdir(cand):
            return cand
    return os.path.join(os.path.dirname(ROOT), "shared", "kvm-unit-tests")


DEFAULT_SHARED = _find_shared()

KUT_PROFILE = """\
[profile]
name = "kut"
extends = "baseline"
[primary]
activate_secondary_controls = true
[secondary]
enable_ept = true
unrestricted_guest = true
[entry]
ia32e_mode_guest = false
"""


def verdict(value: int | None) -> str:
    """From the value the guest wrote to the debug-exit port (None: it did not)."""
    if value == 0:
        return "PASS"
    if value == 38:                  # kvm-unit-tests' SKIP: QEMU exits (38 << 1) | 1 = 77
        return "SKIP"
    return "FAIL"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:70] if lines else ""


def run_vmcfg(work: str, images: str, name: str, timeout: float) -> dict:
    vmcfg = os.path.join(os.path.dirname(sys.executable), "vmcfg")
    cmd = [vmcfg, "launch", os.path.join(work, "kut.toml"), "--guest",
           os.path.join(images, f"{name}.flat"), "--mode", "32", "--memory", "256M",
           "--timeout", str(timeout), "--json"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    wall = time.monotonic() - t0
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        return {"verdict": "FAIL", "status": f"exit {p.returncode}", "wall": wall,
                "last": last_line(p.stderr)}
    value = doc.get("guest_exit_code") if doc.get("status") == "debug-exit" else None
    return {"verdict": verdict(value), "status": doc.get("status"),
            "exit_status": doc.get("exit_status"), "wall": wall,
            "last": last_line(doc.get("console", "")) or doc.get("message", "")[:70]}


def run_qemu(images: str, name: str, timeout: float) -> dict:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-device", "pc-testdev",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-vnc", "none",
           "-serial", "stdio", "-device", "pci-testdev", "-kernel",
           os.path.join(images, f"{name}.flat"), "-smp", "1", "-m", "256"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = None, (e.stdout or b"").decode("latin-1") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    wall = time.monotonic() - t0
    value = rc >> 1 if rc is not None and rc & 1 else None
    return {"verdict": verdict(value),
            "status": f"exit {rc}" if rc is not None else "timeout", "exit_status": rc,
            "wall": wall, "last": last_line(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--images", default=None,
                    help="a directory of *.flat images to run as they are (instead of the "
                         "tarball of --shared)")
    ap.add_argument("--only", default="")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    if a.images is not None:
        if not os.path.isdir(a.images) or not any(
                f.endswith(".flat") for f in os.listdir(a.images)):
            print(f"no *.flat image in {a.images}", file=sys.stderr)
            return 2
    else:
        tars = sorted(f for f in os.listdir(a.shared) if f.endswith(".tgz")) \
            if os.path.isdir(a.shared) else []
        if not tars:
            print(f"no kvm-unit-tests tarball in {a.shared}", file=sys.stderr)
            return 2
    work = tempfile.mkdtemp(prefix="vmcfg-kut-")
    try:
        if a.images is not None:
            images = os.path.abspath(a.images)
        else:
            images = work
            with tarfile.open(os.path.join(a.shared, tars[0])) as t:
                t.extractall(work, filter="data")
        with open(os.path.join(work, "kut.toml"), "w") as f:
            f.write(KUT_PROFILE)
        names = sorted(f[:-5] for f in os.listdir(images) if f.endswith(".flat"))
        if a.only:
            keep = set(a.only.split(","))
            names = [n for n in names if n in keep]
        qemu = not a.no_qemu and shutil.which("qemu-system-x86_64") is not None
        jobs = []
        with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            for n in names:
                jobs.append((n, "vmcfg", ex.submit(run_vmcfg, work, images, n, a.timeout)))
                if qemu:
                    jobs.append((n, "qemu", ex.submit(run_qemu, images, n, a.timeout)))
            res: dict[str, dict] = {}
            for n, who, fut in jobs:
                res.setdefault(n, {})[who] = fut.result()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for n in names:
        v = res[n]["vmcfg"]
        q = res[n].get("qemu")
        rows.append((n, v["verdict"], f"{v['wall']:.1f}s",
                     "" if v["verdict"] != "FAIL" else f"{v['status']}: {v['last']}",
                     q["verdict"] if q else "-", f"{q['wall']:.1f}s" if q else "-"))
    head = ("image", "vmcfg", "time", "vmcfg: status, last console line", "QEMU TCG", "time")
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    else:
        w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        for r in [head] + rows:
            print("  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)))
    ok = sum(1 for r in rows if r[1] != "FAIL")
    qok = sum(1 for r in rows if r[4] not in ("FAIL", "-"))
    print(f"\nvmcfg: {ok}/{len(rows)} pass or skip" +
          (f"; QEMU TCG: {qok}/{len(rows)}" if qemu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
