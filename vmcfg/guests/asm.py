"""Assemble guest sources written in NASM syntax into flat binaries.

Two back ends give the same bytes:

* ``nasm`` (``nasm -f bin``) when it is installed -- the reference;
* vmcfg's own NASM front end over keystone otherwise.  Keystone alone is not
  safe for NASM sources: in its NASM mode plain numbers are read as hex
  (``shl rdx, 32`` shifts by 0x32) -- and from then on in every keystone
  instance of the process --, ``db "text"``, ``times`` and ``$`` are refused
  or silently dropped; in its Intel mode ``byte [x]`` operands are silently
  dropped; in 32-bit code it prefixes LGDT/LIDT with 0x66 (a 24-bit base).
  So the front end does what an assembler's front end does -- the
  preprocessor (``%include``, ``%define``, ``%macro`` with ``%%`` labels),
  labels (``.local`` ones too), ``equ``, ``$``/``$$``, expressions, data
  (``db``/``dw``/``dd``/``dq``, ``times``, ``align``), the layout passes and
  the choice of branch forms -- and hands keystone (Intel syntax) only single
  instructions with every operand a hex number, then puts absolute memory
  operands in the form NASM uses.  tests/test_guest_asm.py checks that both
  back ends give identical images for every bundled source.

Errors are ``AsmError`` with the file and line of the source (inside an
``%include`` or a macro, the line that holds the problem).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_SRC = Path(__file__).resolve().parent / "src"
MAX_INCLUDE_DEPTH = 16
MAX_PASSES = 32


class AsmError(Exception):
    """A source that does not assemble: file:line: message."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else \
            (f"{self.file}: " if self.file else "")
        return f"{where}{self.message}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "message": self.message}


@dataclass
class Assembled:
    data: bytes
    origin: int
    bits: int
    backend: str
    symbols: dict[str, int] = field(default_factory=dict)   # labels (not equ, not macro-local)


def have_nasm() -> str | None:
    return shutil.which("nasm")


def assemble(path: str | os.PathLike, *, include: tuple[str, ...] = (),
             backend: str = "auto", origin: int | None = None,
             bits: int | None = None) -> Assembled:
    """Assemble the NASM source at `path`.  Backend "auto" is $VMCFG_ASSEMBLER when set
    (nasm or keystone), else nasm when installed, else keystone.

    `origin` and `bits` are defaults for a source without its own `org` / `bits`
    (NASM's own defaults are 0 and 16)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise AsmError(e.strerror or "cannot read", str(path)) from None
    except UnicodeDecodeError:
        raise AsmError("an assembly source must be UTF-8 text", str(path)) from None
    dirs = [str(path.parent)] + [str(d) for d in include] + [str(BUNDLED_SRC)]
    if backend == "auto":
        backend = os.environ.get("VMCFG_ASSEMBLER", "auto").strip().lower() or "auto"
    if backend == "auto":
        backend = "nasm" if have_nasm() else "keystone"
    if backend not in ("nasm", "keystone"):
        raise AsmError(f"unknown assembler {backend!r} (nasm, keystone or auto)")
    src_org, src_bits = _scan_org_bits(path, text, dirs)
    head = ""
    if bits is not None and src_bits is None:
        head += f"bits {bits}\n"
    if origin is not None and src_org is None:
        head += f"org {origin:#x}\n"
    mode = src_bits or bits or 16
    if backend == "nasm":
        res = _nasm(path, dirs, head)
    elif head:
        res = _Assembler(dirs).run("<defaults>", head + f'%include "{path.resolve()}"\n')
    else:
        res = _Assembler(dirs).run(str(path), text)
    res.bits = mode
    if res.origin == 0 and src_org is None and origin is not None:
        res.origin = origin
    return res


def assemble_text(text: str, name: str = "<source>", *, base_dir: str | None = None,
                  backend: str = "auto", origin: int | None = None,
                  bits: int | None = None) -> Assembled:
    """Assemble source text (for `vmcfg launch` of an .asm file read elsewhere)."""
    with tempfile.TemporaryDirectory(prefix="vmcfg-asm-") as d:
        p = Path(d) / (Path(name).name or "source.asm")
        p.write_text(text, encoding="utf-8")
        try:
            return assemble(p, include=((base_dir,) if base_dir else ()), backend=backend,
                            origin=origin, bits=bits)
        except AsmError as e:
            if e.file == str(p):
                e.file = name
            raise


# ---- nasm ---------------------------------------------------------------------------

_NASM_MSG = re.compile(r"^(.*?):(\d+): (error|fatal|warning): (.*)$")


def _nasm(path: Path, dirs: list[str], head: str = "") -> Assembled:
    nasm = have_nasm()
    if nasm is None:
        raise AsmError("nasm is not installed (apt-get install nasm), or use the keystone "
                       "assembler", str(path))
    with tempfile.TemporaryDirectory(prefix="vmcfg-nasm-") as d:
        out = os.path.join(d, "out.bin")
        mapf = os.path.join(d, "out.map")
        wrapper = os.path.join(d, "wrapper.asm")
        # the map gives the symbols (and the origin) without parsing the source
        with open(wrapper, "w", encoding="utf-8") as fh:
            fh.write(f'[map symbols {mapf}]\n{head}%include "{path.resolve()}"\n')
        args = [nasm, "-f", "bin", "-o", out] + [f"-I{x}/" for x in dirs] + [wrapper]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            for line in r.stderr.splitlines():
                m = _NASM_MSG.match(line)
                if m and m.group(3) in ("error", "fatal"):
                    f = m.group(1)
                    raise AsmError(m.group(4), str(path) if f == wrapper else f, int(m.group(2)))
            raise AsmError(r.stderr.strip() or f"nasm failed (status {r.returncode})", str(path))
        data = Path(out).read_bytes()
        symbols = _read_nasm_map(mapf)
    org = _scan_org_bits(path, path.read_text(encoding="utf-8"), dirs)[0]
    if org is None:
        m = re.search(r"^org (0x[0-9a-f]+)$", head, re.M)
        org = int(m.group(1), 16) if m else 0
    return Assembled(data, org, 16, "nasm", symbols)


def _read_nasm_map(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and re.fullmatch(r"[0-9A-Fa-f]+", parts[0]) and \
                re.fullmatch(r"[0-9A-Fa-f]+", parts[1]):
            if not parts[2].startswith("..@"):      # macro-local labels
                out[parts[2]] = int(parts[1], 16)
    return out


def _scan_org_bits(path: Path, text: str, dirs: list[str]) -> tuple[int | None, int | None]:
    """The source's first `org` and `bits` (None when it has none)."""
    origin = bits = None
    try:
        pre = _Preprocessor(dirs).run(str(path), text)
    except AsmError:
        return None, None
    for st in pre:
        m = re.match(r"^\s*\[?\s*(org|bits)\s+([^\]]+)\]?\s*$", st.text, re.I)
        if not m:
            continue
        try:
            v = _Expr(m.group(2), {}, 0, 0, st).value()
        except AsmError:
            continue
        if m.group(1).lower() == "org" and origin is None:
            origin = v
        elif m.group(1).lower() == "bits" and bits is None:
            bits = v
    return origin, bits


# ---- preprocessor ---------------------------------------------------------------------

@dataclass
class Stmt:
    text: str
    file: str
    line: int

    def error(self, msg: str) -> AsmError:
        return AsmError(msg, self.file, self.line)


def strip_comment(line: str) -> str:
    """The line without its `;` comment (quotes respected)."""
    q = None
    for i, ch in enumerate(line):
        if q:
            if ch == q:
                q = None
        elif ch in "'\"`":
            q = ch
        elif ch == ";":
            return line[:i]
    return line


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside quotes, brackets and parentheses."""
    out, cur, depth, q = [], [], 0, None
    for ch in text:
        if q:
            cur.append(ch)
            if ch == q:
                q = None
            continue
        if ch in "'\"`":
            q = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out]


_WORD = re.compile(r"[A-Za-z_.$?@][A-Za-z0-9_.$?@#~]*")


def _subst_words(text: str, table: dict[str, str]) -> str:
    """Replace whole words from `table` outside quotes."""
    if not table:
        return text
    out, i, q = [], 0, None
    while i < len(text):
        ch = text[i]
        if q:
            out.append(ch)
            if ch == q:
                q = None
            i += 1
            continue
        if ch in "'\"`":
            q = ch
            out.append(ch)
            i += 1
            continue
        m = _WORD.match(text, i)
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_%")):
            w = m.group(0)
            out.append(table.get(w, w))
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class _Macro:
    name: str
    nmin: int
    nmax: int
    greedy: bool
    body: list[Stmt]


class _Preprocessor:
    """%include, %define (no parameters), %macro/%endmacro with %1.. %0 and %%labels."""

    def __init__(self, dirs: list[str]):
        self.dirs = dirs
        self.defines: dict[str, str] = {}
        self.macros: dict[str, _Macro] = {}
        self.expansions = 0

    def run(self, file: str, text: str) -> list[Stmt]:
        out: list[Stmt] = []
        self._file(file, text, out, 0)
        return out

    def _file(self, file: str, text: str, out: list[Stmt], depth: int) -> None:
        lines = [Stmt(strip_comment(t).rstrip(), file, n)
                 for n, t in enumerate(text.splitlines(), 1)]
        self._lines(lines, out, depth)

    def _lines(self, lines: list[Stmt], out: list[Stmt], depth: int) -> None:
        i = 0
        while i < len(lines):
            st = lines[i]
            s = st.text.strip()
            i += 1
            if not s:
                continue
            if s.startswith("%"):
                m = re.match(r"%(\w+)\s*(.*)$", s)
                d = m.group(1).lower() if m else ""
                rest = m.group(2).strip() if m else ""
                if d == "include":
                    self._include(st, rest, out, depth)
                elif d in ("define", "idefine", "xdefine"):
                    dm = re.match(r"([A-Za-z_.$?@][\w.$?@]*)(\(.*?\))?\s*(.*)$", rest)
                    if not dm:
                        raise st.error(f"%{d}: expected a name")
                    if dm.group(2):
                        raise st.error("%define with parameters is not supported by vmcfg's "
                                       "built-in assembler (install nasm)")
                    self.defines[dm.group(1)] = _subst_words(dm.group(3), self.defines)
                elif d == "undef":
                    self.defines.pop(rest, None)
                elif d in ("macro", "imacro"):
                    i = self._macro(st, rest, lines, i)
                elif d == "endmacro":
                    raise st.error("%endmacro without %macro")
                else:
                    raise st.error(f"%{d} is not supported by vmcfg's built-in assembler "
                                   "(it knows %include, %define, %undef, %macro; install nasm "
                                   "for the rest)")
                continue
            s2 = _subst_words(st.text, self.defines)
            words = s2.split(None, 1)
            # a macro call, possibly after a label
            lab = ""
            if words and words[0].endswith(":"):
                lab, words = words[0], s2.strip()[len(words[0]):].split(None, 1)
            if words and words[0] in self.macros:
                if lab:
                    out.append(Stmt(lab, st.file, st.line))
                args = words[1] if len(words) > 1 else ""
                self._expand(self.macros[words[0]], args, st, out, depth)
                continue
            out.append(Stmt(s2, st.file, st.line))

    def _include(self, st: Stmt, rest: str, out: list[Stmt], depth: int) -> None:
        m = re.match(r"""^["'<](.+?)["'>]$""", rest)
        if not m:
            raise st.error('%include: expected a file name in quotes')
        if depth >= MAX_INCLUDE_DEPTH:
            raise st.error("%include nested too deeply (an include loop?)")
        name = m.group(1)
        here = os.path.dirname(st.file)
        for d in [here] + self.dirs:
            p = os.path.join(d, name)
            if os.path.isfile(p):
                try:
                    text = Path(p).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise st.error(f"%include {name}: cannot read: {e}") from None
                self._file(p, text, out, depth + 1)
                return
        raise st.error(f"%include: no file {name!r} (searched {', '.join([here] + self.dirs)})")

    def _macro(self, st: Stmt, rest: str, lines: list[Stmt], i: int) -> int:
        m = re.match(r"([A-Za-z_.$?@][\w.$?@]*)\s+(\d+)(?:-(\d+|\*))?(\+)?\s*$", rest)
        if not m:
            raise st.error("%macro: expected NAME and a parameter count, e.g. %macro print 1+")
        nmin = int(m.group(2))
        nmax = nmin if not m.group(3) else (1 << 30 if m.group(3) == "*" else int(m.group(3)))
        body: list[Stmt] = []
        while i < len(lines):
            s = lines[i].text.strip()
            if re.match(r"%endm(acro)?\b", s, re.I):
                self.macros[m.group(1)] = _Macro(m.group(1), nmin, nmax, bool(m.group(4)), body)
                return i + 1
            if re.match(r"%i?macro\b", s, re.I):
                raise lines[i].error("%macro inside %macro is not supported")
            body.append(lines[i])
            i += 1
        raise st.error(f"%macro {m.group(1)} has no %endmacro")

    def _expand(self, mac: _Macro, args: str, st: Stmt, out: list[Stmt], depth: int) -> None:
        params = split_top(args) if args.strip() else []
        if mac.greedy and len(params) > mac.nmax:
            params = params[:mac.nmax - 1] + [", ".join(params[mac.nmax - 1:])]
        if not mac.nmin <= len(params) <= mac.nmax:
            raise st.error(f"macro {mac.name} takes {mac.nmin}"
                           + (f"-{mac.nmax}" if mac.nmax != mac.nmin else "")
                           + f" parameters, got {len(params)}")
        if depth >= MAX_INCLUDE_DEPTH:
            raise st.error(f"macro {mac.name} expands itself too deeply")
        self.expansions += 1
        n = self.expansions
        body = []
        for b in mac.body:
            t = re.sub(r"%%([A-Za-z_.$?@][\w.$?@]*)", lambda m: f"..@{n}.{m.group(1)}", b.text)
            t = re.sub(r"%(\d+)", lambda m: params[int(m.group(1)) - 1]
                       if 0 < int(m.group(1)) <= len(params) else
                       (str(len(params)) if m.group(1) == "0" else m.group(0)), t)
            body.append(Stmt(t, st.file, st.line))
        self._lines(body, out, depth + 1)


# ---- expressions ----------------------------------------------------------------------------

_TOK = re.compile(r"""\s*(?:
    (?P<num>0[xX][0-9A-Fa-f_]+|0[bB][01_]+|0[oOqQ][0-7_]+|[0-9][0-9A-Fa-f_]*[hH]\b|
            [01_]+[bB]\b|[0-9][0-9_]*(?:[dD]\b)?)
  | (?P<str>'[^']*'|"[^"]*"|`[^`]*`)
  | (?P<sym>\$\$|\$|[A-Za-z_.?@][\w.$?@#~]*)
  | (?P<op><<|>>|//|%%|[-+*/%&|^~()!])
)""", re.X)


def _num(tok: str) -> int:
    t = tok.replace("_", "").lower()
    if t.startswith("0x"):
        return int(t[2:], 16)
    if t.startswith("0b"):
        return int(t[2:], 2)
    if t.startswith(("0o", "0q")):
        return int(t[2:], 8)
    if t.endswith("h"):
        return int(t[:-1], 16)
    if t.endswith("b") and re.fullmatch(r"[01]+b", t):
        return int(t[:-1], 2)
    if t.endswith("d"):
        return int(t[:-1])
    return int(t)


def _chars(tok: str) -> int:
    b = tok[1:-1].encode("utf-8")
    return int.from_bytes(b[:8], "little")


class Unresolved(Exception):
    """A symbol not (yet) defined."""


class _Expr:
    """NASM integer expressions: + - * / % << >> & | ^ ~ ! ( ), $ and $$, 'chars'."""

    def __init__(self, text: str, symbols: dict[str, int], here: int, start: int, st: Stmt,
                 *, lenient: bool = False, constants: frozenset[str] | set[str] = frozenset()):
        self.text, self.symbols, self.here, self.start, self.st = text, symbols, here, start, st
        self.constants = constants
        self.lenient = lenient
        self.unresolved = False
        self.uses_symbol = False      # refers to a label (an address), not only to constants
        self.toks = []
        i = 0
        while i < len(text):
            m = _TOK.match(text, i)
            if not m or m.end() == i:
                if text[i:].strip() == "":
                    break
                raise st.error(f"cannot read the expression {text.strip()!r} at "
                               f"{text[i:].strip()!r}")
            kind = m.lastgroup
            self.toks.append((kind, m.group(kind)))
            i = m.end()
        self.pos = 0

    def value(self) -> int:
        if not self.toks:
            raise self.st.error("expected an expression")
        v = self._or()
        if self.pos != len(self.toks):
            raise self.st.error(f"unexpected {self.toks[self.pos][1]!r} in {self.text.strip()!r}")
        return v

    def _peek(self):
        return self.toks[self.pos][1] if self.pos < len(self.toks) else None

    def _bin(self, ops, nxt):
        v = nxt()
        while self._peek() in ops:
            op = self.toks[self.pos][1]
            self.pos += 1
            w = nxt()
            if op in ("/", "//", "%", "%%") and w == 0:
                if self.unresolved:
                    w = 1
                else:
                    raise self.st.error("division by zero")
            v = {"|": lambda: v | w, "^": lambda: v ^ w, "&": lambda: v & w,
                 "<<": lambda: v << w, ">>": lambda: v >> w, "+": lambda: v + w,
                 "-": lambda: v - w, "*": lambda: v * w, "/": lambda: v // w,
                 "//": lambda: int(v / w), "%": lambda: v % w, "%%": lambda: v % w}[op]()
        return v

    def _or(self):
        return self._bin(("|",), self._xor)

    def _xor(self):
        return self._bin(("^",), self._and)

    def _and(self):
        return self._bin(("&",), self._shift)

    def _shift(self):
        return self._bin(("<<", ">>"), self._add)

    def _add(self):
        return self._bin(("+", "-"), self._mul)

    def _mul(self):
        return self._bin(("*", "/", "//", "%", "%%"), self._unary)

    def _unary(self):
        t = self._peek()
        if t in ("-", "+", "~", "!"):
            self.pos += 1
            v = self._unary()
            return {"-": -v, "+": v, "~": ~v, "!": int(not v)}[t]
        return self._atom()

    def _atom(self):
        if self.pos >= len(self.toks):
            raise self.st.error(f"the expression {self.text.strip()!r} ends too early")
        kind, t = self.toks[self.pos]
        self.pos += 1
        if t == "(":
            v = self._or()
            if self._peek() != ")":
                raise self.st.error(f"missing ')' in {self.text.strip()!r}")
            self.pos += 1
            return v
        if kind == "num":
            return _num(t)
        if kind == "str":
            return _chars(t)
        if kind == "sym":
            if t == "$":
                return self.here
            if t == "$$":
                return self.start
            if t not in self.constants and "-" not in self.text:
                self.uses_symbol = True
            if t in self.symbols:
                return self.symbols[t]
            if self.lenient:
                self.unresolved = True
                return self.here
            raise self.st.error(f"symbol {t!r} is not defined")
        raise self.st.error(f"unexpected {t!r} in {self.text.strip()!r}")


# ---- registers and instruction forms ---------------------------------------------------------

_GPR = {}
for _i, _n in enumerate(("rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15").split()):
    _GPR[_n] = (64, _i)
for _i, _n in enumerate(("eax ecx edx ebx esp ebp esi edi r8d r9d r10d r11d r12d r13d r14d "
                         "r15d").split()):
    _GPR[_n] = (32, _i)
for _i, _n in enumerate(("ax cx dx bx sp bp si di r8w r9w r10w r11w r12w r13w r14w "
                         "r15w").split()):
    _GPR[_n] = (16, _i)
for _i, _n in enumerate("al cl dl bl spl bpl sil dil r8b r9b r10b r11b r12b r13b r14b r15b".split()):
    _GPR[_n] = (8, _i)
for _n in "ah ch dh bh".split():
    _GPR[_n] = (8, -1)
_OTHER_REGS = set("cs ds es fs gs ss rip eip".split()) | {f"cr{i}" for i in range(16)} | \
    {f"dr{i}" for i in range(8)} | {f"xmm{i}" for i in range(16)} | {f"st{i}" for i in range(8)}
REGISTERS = set(_GPR) | _OTHER_REGS
_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8, "tword": 10, "oword": 16}
_JCC = {"jo": 0, "jno": 1, "jb": 2, "jc": 2, "jnae": 2, "jae": 3, "jnb": 3, "jnc": 3,
        "je": 4, "jz": 4, "jne": 5, "jnz": 5, "jbe": 6, "jna": 6, "ja": 7, "jnbe": 7,
        "js": 8, "jns": 9, "jp": 10, "jpe": 10, "jnp": 11, "jpo": 11, "jl": 12, "jnge": 12,
        "jge": 13, "jnl": 13, "jle": 14, "jng": 14, "jg": 15, "jnle": 15}
_LOOPS = {"loopne": 0xE0, "loopnz": 0xE0, "loope": 0xE1, "loopz": 0xE1, "loop": 0xE2,
          "jcxz": 0xE3, "jecxz": 0xE3, "jrcxz": 0xE3}
_DATA = {"db": 1, "dw": 2, "dd": 4, "dq": 8}
_PREFIXES = {"rep", "repe", "repz", "repne", "repnz", "lock"}


def _le(v: int, n: int) -> bytes:
    return (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


def _hex(v: int) -> str:
    return f"-0x{-v:x}" if v < 0 else f"0x{v:x}"


# ---- the assembler --------------------------------------------------------------------------

@dataclass
class _Item:
    st: Stmt
    kind: str               # "label" "insn" "data" "align" "org" "bits" "equ" "times"
    label: str = ""
    mnemonic: str = ""
    operands: str = ""
    bits: int = 16
    size: int = 0           # bytes in the last pass
    grown: bool = False     # a branch that needed its long form once keeps it


class _Assembler:
    def __init__(self, dirs: list[str]):
        self.dirs = dirs
        self._ks: dict[int, object] = {}

    # statements -> items
    def run(self, file: str, text: str) -> Assembled:
        try:
            return self._run(file, text)
        finally:
            self._ks.clear()

    def _run(self, file: str, text: str) -> Assembled:
        stmts = _Preprocessor(self.dirs).run(file, text)
        items: list[_Item] = []
        glob = ""
        bits = 16
        for st in stmts:
            s = st.text.strip()
            m = re.match(r"^\[?\s*bits\s+(\d+)\s*\]?$", s, re.I)
            if m:
                bits = int(m.group(1))
                if bits not in (16, 32, 64):
                    raise st.error(f"bits {bits}: expected 16, 32 or 64")
                items.append(_Item(st, "bits", bits=bits))
                continue
            if re.match(r"^(use16|use32|use64)$", s, re.I):
                bits = int(s[3:])
                items.append(_Item(st, "bits", bits=bits))
                continue
            m = re.match(r"^\[?\s*org\s+(.+?)\s*\]?$", s, re.I)
            if m:
                items.append(_Item(st, "org", operands=m.group(1), bits=bits))
                continue
            if re.match(r"^\[?\s*(default|section|segment|global|extern|cpu)\b", s, re.I):
                kw = s.strip("[ ").split()[0].lower()
                if kw == "default" and "abs" in s.lower():
                    continue
                raise st.error(f"{kw!r} is not supported by vmcfg's built-in assembler (flat "
                               "binaries only; install nasm)")
            # label
            lab = ""
            m = re.match(r"^([A-Za-z_.?@$][\w.$?@#~]*)\s*:\s*(.*)$", s)
            if m and not m.group(1).lower() in REGISTERS:
                lab, s = m.group(1), m.group(2).strip()
            else:
                m = re.match(r"^([A-Za-z_.?@][\w.$?@#~]*)\s+(equ|db|dw|dd|dq|times|resb|resw|"
                             r"resd|resq)\b\s*(.*)$", s, re.I)
                if m and m.group(1).lower() not in _PREFIXES:
                    lab, s = m.group(1), s[len(m.group(1)):].strip()
            if lab:
                if lab.startswith(".") and not lab.startswith(".."):
                    if not glob:
                        raise st.error(f"local label {lab} before any non-local label")
                    lab = glob + lab
                elif not lab.startswith("..@"):
                    glob = lab
            if s.lower().startswith("equ ") or s.lower() == "equ":
                if not lab:
                    raise st.error("equ needs a label")
                items.append(_Item(st, "equ", label=lab, operands=self._local(s[3:], glob),
                                   bits=bits))
                continue
            if lab:
                items.append(_Item(st, "label", label=lab, bits=bits))
            if not s:
                continue
            items.append(self._parse(st, s, glob, bits))
        return self._layout(items, file)

    def _local(self, text: str, glob: str) -> str:
        """`.x` -> `glob.x` outside quotes (NASM's local labels)."""
        if not glob:
            return text
        out, q, i = [], None, 0
        while i < len(text):
            ch = text[i]
            if q:
                out.append(ch)
                q = None if ch == q else q
            elif ch in "'\"`":
                q = ch
                out.append(ch)
            elif ch == "." and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.@$?")) \
                    and i + 1 < len(text) and (text[i + 1].isalpha() or text[i + 1] == "_"):
                out.append(glob + ".")
            else:
                out.append(ch)
            i += 1
        return "".join(out)

    def _parse(self, st: Stmt, s: str, glob: str, bits: int) -> _Item:
        words = s.split(None, 1)
        mn = words[0].lower()
        ops = self._local(words[1], glob) if len(words) > 1 else ""
        if mn == "times":
            m = re.match(r"^(.*?)\s+((?:db|dw|dd|dq|nop|resb)\b.*)$", ops, re.I)
            if not m:
                raise st.error("times: expected `times COUNT db ...` (or dw/dd/dq/nop)")
            it = _Item(st, "times", operands=m.group(1), bits=bits)
            it.mnemonic = m.group(2)
            return it
        if mn in _DATA:
            return _Item(st, "data", mnemonic=mn, operands=ops, bits=bits)
        if mn in ("resb", "resw", "resd", "resq"):
            return _Item(st, "res", mnemonic=mn, operands=ops, bits=bits)
        if mn == "align":
            return _Item(st, "align", operands=ops, bits=bits)
        return _Item(st, "insn", mnemonic=mn, operands=ops, bits=bits)

    # layout passes
    def _layout(self, items: list[_Item], file: str) -> Assembled:
        self.equs = {it.label for it in items if it.kind == "equ"}
        prev: dict[str, int] | None = None
        for _ in range(MAX_PASSES):
            _out, symbols, _origin = self._pass(items, prev or {}, False)
            if symbols == prev:
                out, symbols, origin = self._pass(items, symbols, True)
                first_bits = next((it.bits for it in items if it.kind == "bits"), 16)
                return Assembled(out, origin, first_bits, "keystone",
                                 {k: v for k, v in symbols.items()
                                  if not k.startswith("..@") and k not in self.equs})
            prev = symbols
        raise AsmError("the layout does not settle (labels keep moving between passes)", file)

    def _pass(self, items: list[_Item], known: dict[str, int], final: bool):
        symbols: dict[str, int] = {}
        origin = 0
        start = None
        pc = 0
        chunks: list[bytes] = []
        lenient = not final

        def ev(text: str, st: Stmt, here: int):
            e = _Expr(text, {**known, **symbols}, here, origin, st, lenient=lenient,
                      constants=self.equs)
            return e.value(), e

        for it in items:
            st = it.st
            if it.kind == "org":
                if start is not None:
                    raise st.error("org after code or data (flat binaries have one origin)")
                origin, _ = ev(it.operands, st, 0)
                pc = origin
                continue
            if it.kind == "bits":
                continue
            if start is None:
                start = origin
            if it.kind == "label":
                if it.label in symbols:
                    raise st.error(f"label {it.label!r} is defined twice")
                symbols[it.label] = pc
                continue
            if it.kind == "equ":
                if it.label in symbols:
                    raise st.error(f"label {it.label!r} is defined twice")
                symbols[it.label], _ = ev(it.operands, st, pc)
                continue
            if it.kind == "align":
                parts = split_top(it.operands)
                n, _ = ev(parts[0], st, pc)
                if n <= 0 or n & (n - 1):
                    raise st.error(f"align {n}: expected a power of two")
                pad = (-(pc - origin)) % n
                fill = b"\x90"
                if len(parts) > 1:
                    m = re.match(r"^db\s+(.+)$", parts[1] + ("," + ",".join(parts[2:])
                                                           if len(parts) > 2 else ""), re.I)
                    if not m:
                        raise st.error("align N, db VALUE is the only fill form supported")
                    fill = _le(ev(m.group(1), st, pc)[0], 1)
                b = fill * pad
            elif it.kind == "times":
                n, _ = ev(it.operands, st, pc)
                if n < 0:
                    if lenient:
                        n = 0
                    else:
                        raise st.error(f"times {n}: the count is negative")
                sub = it.mnemonic.split(None, 1)
                if sub[0].lower() == "nop":
                    b = b"\x90" * n
                elif sub[0].lower() == "resb":
                    b = b"\0" * (n * ev(sub[1], st, pc)[0])
                else:
                    one = self._data(sub[0].lower(), sub[1] if len(sub) > 1 else "", st, pc, ev)
                    b = one * n
            elif it.kind == "data":
                b = self._data(it.mnemonic, it.operands, st, pc, ev)
            elif it.kind == "res":
                n, _ = ev(it.operands, st, pc)
                b = b"\0" * (n * {"resb": 1, "resw": 2, "resd": 4, "resq": 8}[it.mnemonic])
            else:
                b = self._insn(it, pc, ev, final)
            chunks.append(b)
            pc += len(b)
        return b"".join(chunks), symbols, origin

    def _data(self, mn: str, ops: str, st: Stmt, pc: int, ev) -> bytes:
        width = _DATA[mn]
        out = bytearray()
        if not ops.strip():
            raise st.error(f"{mn} needs at least one value")
        for part in split_top(ops):
            if len(part) >= 2 and part[0] in "'\"`" and part[-1] == part[0]:
                raw = part[1:-1].encode("utf-8")
                if part[0] == "`":
                    raw = raw.decode("unicode_escape").encode("latin-1")
                pad = (-len(raw)) % width
                out += raw + b"\0" * pad
                continue
            v, _ = ev(part, st, pc + len(out))
            if not -(1 << (8 * width - 1)) <= v < (1 << (8 * width)):
                raise st.error(f"{mn} value {part!r} = {v:#x} does not fit in {width} bytes")
            out += _le(v, width)
        return bytes(out)

    # instructions
    def _ks_for(self, bits: int):
        ks = self._ks.get(bits)
        if ks is None:
            # Intel syntax, never keystone's NASM mode: that mode switches the number radix
            # of every Ks in the process to hex, for good (the VMM's exit counter uses one)
            from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, KS_MODE_64, Ks
            ks = Ks(KS_ARCH_X86, {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}[bits])
            self._ks[bits] = ks
        return ks

    def _encode(self, text: str, addr: int, it: _Item) -> bytes:
        from keystone import KsError
        try:
            enc, n = self._ks_for(it.bits).asm(text, addr)
        except KsError as e:
            raise it.st.error(f"cannot assemble {it.mnemonic} {it.operands}".strip()
                              + f": {e}") from None
        if not enc:
            raise it.st.error(f"cannot assemble {it.mnemonic} {it.operands}".strip()
                              + " (keystone produced nothing)")
        return bytes(enc)

    def _insn(self, it: _Item, pc: int, ev, final: bool) -> bytes:
        mn, ops = it.mnemonic, it.operands
        st = it.st
        prefix = b""
        if mn in _PREFIXES:
            if not ops:
                return self._encode(mn, pc, it)
            w = ops.split(None, 1)
            if mn == "rep" or w[0].lower() in ("movsb", "movsw", "movsd", "movsq", "stosb",
                                                "stosw", "stosd", "stosq", "lodsb", "lodsw",
                                                "lodsd", "lodsq", "insb", "insw", "insd",
                                                "outsb", "outsw", "outsd", "cmpsb", "scasb"):
                return self._encode(f"{mn} {ops}", pc, it)
            prefix = {"lock": b"\xf0", "repne": b"\xf2", "repnz": b"\xf2"}.get(mn, b"\xf3")
            mn, ops = w[0].lower(), (w[1] if len(w) > 1 else "")
            pc += len(prefix)
        operands = split_top(ops) if ops.strip() else []
        # branches: NASM's forms, chosen here (keystone's choice differs for numeric targets)
        if (mn == "jmp" or mn == "call" or mn in _JCC or mn in _LOOPS) and len(operands) == 1:
            op = operands[0]
            low = op.lower()
            if ":" in op and not op.startswith("["):
                return prefix + self._far(it, op, pc, ev)
            first = low.split()[0] if low.split() else ""
            if not low.startswith("[") and first not in REGISTERS and \
                    first not in _SIZES and first not in ("far",):
                return prefix + self._branch(it, mn, op, pc, ev)
        text_ops, rip_targets, absmem = [], [], []
        for i, op in enumerate(operands):
            t, rel, ab = self._operand(op, it, pc, ev)
            text_ops.append(t)
            if rel is not None:
                rip_targets.append((i, rel))
            if ab is not None:
                absmem.append(ab)
        # mov r64, imm: NASM uses mov r32 for constants that fit, imm64 for addresses
        if mn == "mov" and len(operands) == 2 and operands[0].lower() in _GPR and \
                _GPR[operands[0].lower()][0] == 64 and self._is_imm(operands[1]):
            v, e = ev(self._strip_size(operands[1]), st, pc)
            reg = _GPR[operands[0].lower()][1]
            if e.uses_symbol or not -(1 << 31) <= v < (1 << 32) or \
                    operands[1].lower().startswith("qword"):
                rex = 0x48 | (1 if reg >= 8 else 0)
                return prefix + bytes([rex, 0xB8 + (reg & 7)]) + _le(v, 8)
            if v >= 0:
                r32 = [k for k, (w, n) in _GPR.items() if w == 32 and n == reg][0]
                return prefix + self._encode(f"mov {r32}, {_hex(v)}", pc, it)
        text = f"{mn} {', '.join(text_ops)}" if text_ops else mn
        if rip_targets:
            (i, target), = rip_targets[:1]
            probe = self._encode(text.replace("@RIPDISP@", "0x0"), pc, it)
            disp = target - (pc + len(probe))
            if not final and not -(1 << 31) <= disp < (1 << 31):
                disp = 0
            if not -(1 << 31) <= disp < (1 << 31):
                raise st.error(f"{operands[i]}: the target is more than 2 GiB away")
            b = self._encode(text.replace("@RIPDISP@", _hex(disp)), pc, it)
        else:
            b = self._encode(text, pc, it)
        if absmem and it.bits == 64:
            b = self._absolute64(b, absmem[0])
        if it.bits == 32 and mn in ("lgdt", "lidt", "sgdt", "sidt") and b[:1] == b"\x66":
            b = b[1:]           # keystone's operand-size prefix would make the base 24-bit
        if it.bits != 16 and mn == "mov" and b[:1] == b"\x66" and operands and \
                operands[0].strip().lower() in ("cs", "ds", "es", "fs", "gs", "ss"):
            b = b[1:]           # MOV to a segment register needs no operand-size prefix
        return prefix + b

    @staticmethod
    def _strip_size(op: str) -> str:
        w = op.split(None, 1)
        if w and w[0].lower() in _SIZES | {"strict": 0} and len(w) > 1:
            return _Assembler._strip_size(w[1])
        return op

    def _is_imm(self, op: str) -> bool:
        o = self._strip_size(op).strip().lower()
        return not o.startswith("[") and o.split()[0] not in REGISTERS if o else False

    def _operand(self, op: str, it: _Item, pc: int, ev) -> tuple[str, int | None, int | None]:
        """The operand with every expression a number; (text, rip target, absolute memory)."""
        o = op.strip()
        low = o.lower()
        if low in REGISTERS:
            return low, None, None
        size = ""
        w = o.split(None, 1)
        while w and w[0].lower() in _SIZES and len(w) > 1:
            size += w[0].lower() + " "
            o = w[1].strip()
            w = o.split(None, 1)
        if o.startswith("[") and size:
            size = size.strip().split()[-1] + " ptr "   # Intel syntax drops `byte [x]` silently
        if o.startswith("["):
            if not o.endswith("]"):
                raise it.st.error(f"missing ']' in {op!r}")
            inner = o[1:-1].strip()
            seg = ""
            m = re.match(r"^([cdefgs]s)\s*:\s*(.*)$", inner, re.I)
            if m:
                seg, inner = m.group(1).lower() + ":", m.group(2)
            rel = False
            m = re.match(r"^(rel|abs)\s+(.*)$", inner, re.I)
            if m:
                rel = m.group(1).lower() == "rel"
                inner = m.group(2)
            regs, const = [], []
            for sign, term in re.findall(r"([+-]?)\s*([^+-]+)", inner.replace(" ", "")):
                t = term.lower()
                mm = re.fullmatch(r"([a-z0-9]+)(?:\*(\d+))?|(\d+)\*([a-z0-9]+)", t)
                if mm and (mm.group(1) in _GPR or mm.group(4) in _GPR):
                    if sign == "-":
                        raise it.st.error(f"a register cannot be subtracted in {op!r}")
                    regs.append(t if mm.group(1) else f"{mm.group(4)}*{mm.group(3)}")
                else:
                    const.append(f"{sign}{term}")
            ctext = "".join(const).lstrip("+") or "0"
            v, _ = ev(ctext, it.st, pc)
            if rel:
                if regs:
                    raise it.st.error(f"rel with a register in {op!r}")
                return f"{size}[{seg}rip + @RIPDISP@]", v, None
            if regs:
                body = " + ".join(regs) + (f" + {_hex(v)}" if v else "")
                return f"{size}[{seg}{body}]", None, None
            return f"{size}[{seg}{_hex(v)}]", None, v
        # an immediate
        v, _ = ev(o, it.st, pc)
        return f"{size}{_hex(v)}", None, None

    @staticmethod
    def _absolute64(b: bytes, absval: int) -> bytes:
        """64-bit code: an absolute [disp32] as NASM encodes it (ModRM+SIB, no base), not
        keystone's RIP-relative or moffs forms."""
        i = 0
        while i < len(b) and b[i] in (0x66, 0x67, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF2,
                                      0xF3, 0xF0):
            i += 1
        rex = b[i] if i < len(b) and 0x40 <= b[i] <= 0x4F else None
        j = i + (1 if rex is not None else 0)
        if j < len(b) and 0xA0 <= b[j] <= 0xA3 and len(b) == j + 9:
            op = {0xA0: 0x8A, 0xA1: 0x8B, 0xA2: 0x88, 0xA3: 0x89}[b[j]]
            return b[:j] + bytes([op, 0x04, 0x25]) + _le(absval, 4)
        from iced_x86 import Decoder, Register
        dec = Decoder(64, b, ip=0)
        ins = dec.decode()
        if ins.len != len(b) or ins.memory_base != Register.RIP:
            return b
        d = dec.get_constant_offsets(ins).displacement_offset
        modrm = b[d - 1]
        return b[:d - 1] + bytes([(modrm & 0x38) | 0x04, 0x25]) + _le(absval, 4) + b[d + 4:]

    def _branch(self, it: _Item, mn: str, op: str, pc: int, ev) -> bytes:
        o = op.strip()
        force = ""
        w = o.split(None, 1)
        while w and w[0].lower() in ("short", "near", "strict", "word", "dword") and len(w) > 1:
            force = w[0].lower() if w[0].lower() in ("short", "near") else force
            o = w[1]
            w = o.split(None, 1)
        target, e = ev(o, it.st, pc)
        rel_w = 2 if it.bits == 16 else 4

        def rel(n, length):
            return target - (pc + length)
        if mn in _LOOPS:
            d = rel(1, 2)
            if not -128 <= d < 128 and not e.unresolved:
                raise it.st.error(f"{mn}: the target is out of range for a short jump")
            return bytes([_LOOPS[mn]]) + _le(d, 1)
        short_ok = mn != "call" and force != "near" and -128 <= rel(1, 2) < 128 and not it.grown
        if force == "short":
            if not -128 <= rel(1, 2) < 128 and not e.unresolved:
                raise it.st.error(f"{mn} short: the target is out of range")
            short_ok = True
        if short_ok:
            return bytes([0xEB if mn == "jmp" else 0x70 + _JCC[mn]]) + _le(rel(1, 2), 1)
        if mn != "call" and force != "near":
            it.grown = True
        if mn == "call":
            return b"\xE8" + _le(rel(1, 1 + rel_w), rel_w)
        if mn == "jmp":
            return b"\xE9" + _le(rel(1, 1 + rel_w), rel_w)
        return bytes([0x0F, 0x80 + _JCC[mn]]) + _le(rel(1, 2 + rel_w), rel_w)

    def _far(self, it: _Item, op: str, pc: int, ev) -> bytes:
        if it.mnemonic != "jmp" and it.mnemonic != "call":
            raise it.st.error(f"{it.mnemonic} SEL:OFFSET is not an instruction")
        o = op.strip()
        width = 2 if it.bits == 16 else 4
        pre = b""
        w = o.split(None, 1)
        if w[0].lower() in ("dword", "word") and len(w) > 1:
            want = 4 if w[0].lower() == "dword" else 2
            if want != width:
                pre = b"\x66"
            width = want
            o = w[1]
        if it.bits == 64:
            raise it.st.error("far jmp/call with an immediate SEL:OFFSET does not exist in "
                              "64-bit mode")
        sel, off = split_top(o, ":")[:2]
        s, _ = ev(sel, it.st, pc)
        f, _ = ev(off, it.st, pc)
        return pre + bytes([0xEA if it.mnemonic == "jmp" else 0x9A]) + _le(f, width) + _le(s, 2)
