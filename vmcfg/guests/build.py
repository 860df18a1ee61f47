"""The bundled guests and their sources; rebuild their images.

The images vmcfg/guests/*.bin are committed (and installed), so running vmcfg
needs no assembler.  After changing a source, rebuild with

    python -m vmcfg.guests.build [NAME...]      # or: vmcfg guest build builtin:NAME -o ...

which uses nasm when installed and vmcfg's NASM front end over keystone
otherwise (vmcfg.guests.asm; both give the same bytes).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .asm import BUNDLED_SRC, assemble

HERE = Path(__file__).resolve().parent
SRC = BUNDLED_SRC


def source_path(spec: str) -> Path:
    """A source file, or `builtin:NAME` -> the bundled NAME.asm."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        p = SRC / f"{name}.asm"
        if not p.is_file():
            names = ", ".join(sorted(x.stem for x in SRC.glob("*.asm"))) or "none installed"
            raise FileNotFoundError(f"no bundled guest source {name!r} (bundled: {names})")
        return p
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"{spec}: no such file")
    return p


def bundled() -> list[dict]:
    """name, image, source and profile (or None) of every bundled guest."""
    out = []
    for img in sorted(HERE.glob("*.bin")):
        src = SRC / f"{img.stem}.asm"
        prof = HERE / f"{img.stem}.toml"
        out.append({"name": img.stem, "image": str(img),
                    "source": str(src) if src.is_file() else None,
                    "profile": str(prof) if prof.is_file() else None})
    return out


def build(names: list[str] | None = None) -> list[Path]:
    out = []
    for src in sorted(SRC.glob("*.asm")):
        if names and src.stem not in names:
            continue
        dst = HERE / f"{src.stem}.bin"
        dst.write_bytes(assemble(src).data)
        out.append(dst)
    return out


if __name__ == "__main__":
    for p in build(sys.argv[1:] or None):
        print(f"{p.relative_to(HERE.parent.parent)}  {p.stat().st_size} bytes")
