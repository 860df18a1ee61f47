"""Rebuild the bundled guest images: vmcfg/guests/src/*.asm -> vmcfg/guests/*.bin.

Needs NASM (apt-get install nasm).  The images are committed, so installing
vmcfg does not need an assembler; run this after changing a source:

    python vmcfg/guests/build.py [NAME...]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"


def build(names: list[str] | None = None) -> list[Path]:
    nasm = shutil.which("nasm")
    if nasm is None:
        raise SystemExit("build.py: nasm not found (apt-get install nasm)")
    out = []
    for src in sorted(SRC.glob("*.asm")):
        if names and src.stem not in names:
            continue
        dst = HERE / f"{src.stem}.bin"
        subprocess.run([nasm, "-f", "bin", "-I", f"{SRC}/", "-o", str(dst), str(src)], check=True)
        out.append(dst)
    return out


if __name__ == "__main__":
    for p in build(sys.argv[1:] or None):
        print(f"{p.relative_to(HERE.parent.parent)}  {p.stat().st_size} bytes")
