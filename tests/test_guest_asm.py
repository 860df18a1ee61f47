"""Guest sources in NASM syntax: two assemblers, one result; errors with file:line; the
sources ship in the wheel and build from the installed package.

The committed images vmcfg/guests/*.bin are nasm's output.  vmcfg's own NASM front end over
keystone (used when nasm is not installed) must give the same bytes for every bundled
source, and for a source full of the things keystone alone gets wrong.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vmcfg.guests.asm import AsmError, assemble

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "vmcfg" / "guests"
SOURCES = sorted((GUESTS / "src").glob("*.asm"))
NASM = shutil.which("nasm")
need_nasm = pytest.mark.skipif(NASM is None and not os.environ.get("CI"),
                               reason="nasm is not installed (apt-get install nasm)")


def vmcfg(*args, cwd=None, env=None, pythonpath=None):
    e = {**os.environ, "NO_COLOR": "1", **(env or {})}
    if pythonpath:
        e["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=e)


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_keystone_front_end_gives_the_bundled_images(src):
    k = assemble(src, backend="keystone")
    assert k.backend == "keystone"
    assert k.data == (GUESTS / f"{src.stem}.bin").read_bytes()


@need_nasm
@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_nasm_and_keystone_agree(src):
    n = assemble(src, backend="nasm")
    k = assemble(src, backend="keystone")
    assert n.data == k.data == (GUESTS / f"{src.stem}.bin").read_bytes()
    assert (n.origin, n.bits) == (k.origin, k.bits)
    assert n.symbols == k.symbols           # every label at the same address


# Each line is something keystone by itself assembles wrongly or not at all.
PITFALLS = {
    64: r"""
%define PORT 0xF4            ; %define
%macro out_al 1              ; a macro with a %% label
        jmp %%go
%%msg:  db %1, 0
%%go:   mov al, 1
%endmacro
org 0x100000
start:  shl rdx, 32          ; decimal (keystone's NASM mode reads 0x32)
        mov rcx, 16          ; -> mov ecx, 16 like nasm
        mov rdi, table + 3*16; an address: imm64
        mov eax, [table]     ; absolute: ModRM+SIB, not moffs
        mov ebx, [table + 8] ; absolute: not RIP-relative
        cmp byte [table], 0  ; keystone's Intel mode drops `byte [x]`
        lea rsi, [rel msg]   ; RIP-relative
        mov ss, ax           ; no operand-size prefix
        add al, 'a' - '0' - 10
        out PORT, al
        out_al "semi;colon"  ; a ; inside quotes is not a comment
.loop:  dec ecx
        jnz .loop            ; local label
        jmp far_away
        times 200 nop
far_away:
        hlt
msg:    db "hi", 10, 0
len     equ $ - msg
        dq $, $$, len
align 16
table:  times 4 dq 0
""",
    32: r"""
bits 32
org 0x100000
        lgdt [gdtr]          ; keystone adds 0x66: a 24-bit base
        lidt [gdtr]
        jmp 0x08:next        ; far jump
next:   mov eax, [gdtr]
        mov esi, gdtr
        hlt
gdtr:   dw 23
        dd 0x12345678
""",
    16: r"""
bits 16
org 0x7c00
        jmp 0:start
start:  mov si, msg
        lgdt [gdtr]
        jmp dword 0x08:0x100000
msg:    db 'boot', 0
gdtr:   dw 0x17
        dd gdtr
        times 510 - ($ - $$) db 0
        dw 0xAA55
""",
}


@need_nasm
@pytest.mark.parametrize("bits", sorted(PITFALLS))
def test_what_keystone_alone_gets_wrong(bits, tmp_path):
    src = tmp_path / f"p{bits}.asm"
    src.write_text(("bits 64\n" if bits == 64 else "") + PITFALLS[bits])
    n = assemble(src, backend="nasm")
    k = assemble(src, backend="keystone")
    assert k.data == n.data, (k.data.hex(), n.data.hex())
    if bits == 16:
        assert len(n.data) == 512 and n.data[-2:] == b"\x55\xAA"


def test_cli_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "inc.inc").write_text("; helpers\nhelper: ret\n        mov rax, [nowhere]\n")
    bad = tmp_path / "bad.asm"
    bad.write_text('bits 64\norg 0x100000\n%include "inc.inc"\n        ret ; fine\n')
    for asm in (["keystone"] + (["nasm"] if NASM else [])):
        r = vmcfg("guest", "build", str(bad), "-o", str(tmp_path / "x.bin"), "--assembler", asm)
        assert r.returncode == 2, (asm, r.stderr)
        assert f"{tmp_path / 'inc.inc'}:3: " in r.stderr and "nowhere" in r.stderr, (asm, r.stderr)
        assert "Traceback" not in r.stderr and not (tmp_path / "x.bin").exists()
    bad.write_text("bits 64\n\n  mov eax, 1 ; a comment\n  frobnicate eax\n")
    for asm in (["keystone"] + (["nasm"] if NASM else [])):
        r = vmcfg("guest", "build", str(bad), "--assembler", asm, "--json", cwd=tmp_path)
        assert r.returncode == 2
        e = json.loads(r.stdout)["error"]
        assert (e["file"], e["line"]) == (str(bad), 4), (asm, e)
    with pytest.raises(AsmError) as ei:
        assemble(bad, backend="keystone")
    assert str(ei.value).startswith(f"{bad}:4: ")


def test_launch_runs_nasm_sources_the_same_with_either_assembler(tmp_path):
    g = tmp_path / "g.asm"
    g.write_text('; a guest in NASM syntax using the bundled runtime\nbits 64\norg 0x100000\n'
                 '        jmp start\n%include "lib64.inc"\n'
                 'start:  print "sum: "          ; comments; with ; inside\n'
                 '        mov rax, 40 + 2\n        call puthex\n        call newline\n'
                 '        exit 7\n')
    docs = []
    for asm in ("keystone", "nasm") if NASM else ("keystone",):
        r = vmcfg("launch", "baseline", "--guest", str(g), "--json",
                  env={"VMCFG_ASSEMBLER": asm})
        assert r.stdout, (asm, r.stderr)      # the status follows the guest (issue 15 #2)
        doc = json.loads(r.stdout)
        docs.append((doc["guest_exit_code"], doc["console"], doc["instructions"]))
    assert docs[0][0] == 7 and docs[0][1] == "sum: 0x000000000000002a\n"
    assert all(d == docs[0] for d in docs)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """`pip wheel . --no-deps`, unpacked as site-packages would hold it."""
    d = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools builds in the source tree (build/, *.egg-info), and two
    # test runs of one checkout at once would trip over each other's files there
    import shutil
    src = d / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "smoke-results"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                        "-w", str(d / "dist")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = (d / "dist").glob("vmcfg-*.whl")
    site = d / "site"
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        z.extractall(site)
    return whl, names, site


def test_wheel_ships_the_sources_and_selftest_profile(installed_wheel):
    _whl, names, _site = installed_wheel
    # every package of the source tree is in the wheel (pyproject lists them one by one)
    for init in (ROOT / "vmcfg").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} is not in the wheel: add its package to pyproject.toml"
    for s in SOURCES:
        assert f"vmcfg/guests/src/{s.name}" in names
    assert "vmcfg/guests/src/lib64.inc" in names
    assert "vmcfg/guests/selftest.toml" in names
    assert "vmcfg/guests/hello32.bin" in names


def test_guest_build_from_the_installed_package(installed_wheel, tmp_path):
    _whl, _names, site = installed_wheel
    r = vmcfg("guest", "list", "--json", cwd=tmp_path, pythonpath=str(site))
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    # the installed package, not the source tree
    assert rows["selftest"]["source"].startswith(str(site))
    assert rows["selftest"]["profile"] == str(site / "vmcfg" / "guests" / "selftest.toml")
    for asm in ("keystone", "nasm") if NASM else ("keystone",):
        out = tmp_path / f"selftest-{asm}.bin"
        r = vmcfg("guest", "build", "builtin:selftest", "-o", str(out), "--assembler", asm,
                  cwd=tmp_path, pythonpath=str(site))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == (GUESTS / "selftest.bin").read_bytes()
    # the shipped self-test profile runs the shipped guest, and it passes
    r = vmcfg("launch", rows["selftest"]["profile"], "--json", cwd=tmp_path,
              pythonpath=str(site))
    doc = json.loads(r.stdout)
    assert doc["guest_exit_code"] == 0 and doc["console"].endswith("selftest: all passed\n")
