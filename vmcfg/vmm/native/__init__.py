"""The exit fast path's shared state, and the optional C helper that uses it (issue 14).

`fastexit.c` (built at install time by setup.py as an optional extension, loaded here with
ctypes) is the Unicorn code hook at every trapped instruction.  It does CPUID, RDTSC and
byte IN/OUT on latch ports entirely in C when nothing needs Python (see the C file), hands
IN/OUT that no control intercepts straight to the device callback (`set_python_io`), and
otherwise calls the VMM's Python trap path with the guest registers already read in one batch
(`snapshot`) and sends the register writes the Python side queued (`queue_writes`) in one
batch afterwards.

The state block (`FxState`) is the one home of the exit count, the idle ticks and the TSC
adjustment, and of the per-reason exit counts the C side adds: it exists with or without
the helper, so the Python fallback reads and writes the same fields.

``VMCFG_NO_NATIVE=1`` in the environment forces the Python fallback (the tests run the
exit paths both ways).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os

FX_VERSION = 9
NSNAP = 18
NWRITE = 32
NREASONS = 128
NCPUID = 64
NLATCH = 8

FAST = 1
RDTSC_EXITING = 2
TSC_OFFSET = 4
TSC_SCALE = 8
IO_BITMAPS = 16
IO_UNCOND = 32

K_NONE, K_CPUID, K_RDTSC, K_OUT_IMM, K_IN_IMM, K_OUT_DX, K_IN_DX = range(7)
NO_PORT = 0xFFFFFFFF

# instruction bytes the C side knows, and what they are (decoding them needs no mode)
FAST_KINDS = {b"\x0f\xa2": K_CPUID, b"\x0f\x31": K_RDTSC, b"\xec": K_IN_DX, b"\xee": K_OUT_DX}
FAST_IMM = {0xE4: K_IN_IMM, 0xE6: K_OUT_IMM}

_u64 = ctypes.c_uint64
_TRAP_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                            ctypes.c_void_p)
# the direct device path: (port | size << 16 | in << 24, value written, instructions retired)
_IO_CB = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)
IO_IN = 1 << 24
# a user exit handler from the hook: (reason, linear address, instructions retired before it,
# the exit's number, the VMM's TSC at the exit, RAX, RCX, RDX, the RIP register) -> LEAN_*
_EXIT_CB = ctypes.CFUNCTYPE(ctypes.c_uint64, *(ctypes.c_uint64,) * 9)
LEAN_RESUMED = 0        # the guest resumes at the RIP queued; the hook counts the instruction
LEAN_COUNTED = 1        # the exit happened; the Python side set the count (end, fault, ...)
LEAN_NONE = 2           # the Python side took its full trap path (exit_count given back)
LEAN_STOPPING = 3       # as LEAN_RESUMED, but the engine stops (the run loop sets the timers)


class FxCpuid(ctypes.Structure):
    _fields_ = [("leaf", ctypes.c_uint32), ("sub", ctypes.c_uint32), ("any", ctypes.c_uint32),
                ("used", ctypes.c_uint32), ("r", ctypes.c_uint32 * 4)]


class FxLatch(ctypes.Structure):
    _fields_ = [("port", _u64), ("value", _u64), ("wmask", _u64), ("read_cell", _u64)]


class FxState(ctypes.Structure):
    _fields_ = [("version", _u64), ("flags", _u64), ("py_mask", _u64 * (NREASONS // 64)),
                ("counter", ctypes.c_void_p), ("exit_count", _u64), ("idle_ticks", _u64),
                ("tsc_adjust", _u64), ("tsc_per_insn", _u64), ("exit_cost", _u64),
                ("tsc_offset", _u64), ("tsc_mult", _u64), ("io_bitmap", ctypes.c_void_p),
                ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
                ("read_batch", ctypes.c_void_p), ("write_batch", ctypes.c_void_p),
                ("py_trap", ctypes.c_void_p), ("cr4_id", _u64),
                ("reg_ids", _u64 * NSNAP), ("snap", _u64 * NSNAP), ("nwrite", _u64),
                ("wids", _u64 * NWRITE), ("wvals", _u64 * NWRITE), ("pc_write", _u64),
                ("pc", _u64), ("stats", _u64 * NREASONS), ("stats_ns", _u64 * NREASONS),
                ("fast", _u64), ("slow", _u64), ("ncpuid", _u64),
                ("cpuid", FxCpuid * NCPUID), ("latch", FxLatch * NLATCH),
                ("mtf_on", _u64), ("mtf_started", _u64), ("mtf_skip", _u64), ("mtf_done", _u64),
                ("py_io", ctypes.c_void_p), ("bits", _u64), ("io_direct", _u64),
                ("py_io_obj", ctypes.c_void_p),
                ("lean_mask", _u64 * (NREASONS // 64)), ("py_exit", ctypes.c_void_p),
                ("lean", _u64), ("py_exit_obj", ctypes.c_void_p), ("py_pend", ctypes.c_void_p),
                ("py_rcache", ctypes.c_void_p)]


class FxEntry(ctypes.Structure):
    _fields_ = [("st", ctypes.c_void_p), ("kind", _u64), ("length", _u64), ("mode64", _u64),
                ("block", _u64), ("prefix", _u64), ("port", _u64), ("size", _u64),
                ("bits", _u64)]


_LIB: ctypes.CDLL | None | bool = False


def disabled() -> bool:
    """VMCFG_NO_NATIVE=1 (or any value but '' and '0') forces the Python fallback."""
    return os.environ.get("VMCFG_NO_NATIVE", "") not in ("", "0")


def library() -> ctypes.CDLL | None:
    """The built helper, or None (not built, a different build, or VMCFG_NO_NATIVE)."""
    global _LIB
    if disabled():
        return None
    if _LIB is False:
        _LIB = _load()
    return _LIB or None


def _load() -> ctypes.CDLL | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_fastexit" + suffix)
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            if lib.fx_version() != FX_VERSION or lib.fx_state_size() != ctypes.sizeof(FxState) \
                    or lib.fx_entry_size() != ctypes.sizeof(FxEntry):
                return None                # a stale build: the Python path is always right
            return lib
        except (OSError, AttributeError):
            return None
    return None


def status() -> str:
    """One line for humans: which exit path runs."""
    if disabled():
        return "python (VMCFG_NO_NATIVE is set)"
    return "native (fastexit.c)" if library() is not None else \
        "python (the C helper is not built: no compiler at install time)"


class FastExit:
    """The state block of one vCPU, its per-address entries, and the hook function."""

    def __init__(self, reg_ids: list[int], cr4_id: int, *, native: bool | None = None):
        lib = library() if native is not False else None
        if native and lib is None:
            raise RuntimeError(f"the native exit path is not available: {status()}")
        self.lib = lib
        self.native = lib is not None
        st = self.state = FxState()
        st.version = FX_VERSION
        for i in range(NREASONS // 64):
            st.py_mask[i] = (1 << 64) - 1           # every reason to Python until it is known
        for i, r in enumerate(reg_ids):
            st.reg_ids[i] = r
        st.cr4_id = cr4_id
        for i in range(NLATCH):
            st.latch[i].port = NO_PORT
        self._bitmap = (ctypes.c_uint8 * 8192)()
        self.io_bitmap = bytes(8192)                # the same bits, for the Python path
        st.io_bitmap = ctypes.addressof(self._bitmap)
        self._entries: dict[int, FxEntry] = {}
        self._latch_ports: dict[int, int] = {}
        self._cpuid_keys: set = set()
        # the default CPUID handler's results by (EAX, ECX), emptied with the C cache
        self.cpuid_memo: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._py_cb = None
        self.hook_fn: ctypes.c_void_p | None = None
        self.step_fn: ctypes.c_void_p | None = None
        if lib is not None:
            from unicorn.unicorn_py3.unicorn import uclib
            st.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
            st.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
            st.read_batch = ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p).value
            st.write_batch = ctypes.cast(uclib.uc_reg_write_batch, ctypes.c_void_p).value
            self.hook_fn = ctypes.cast(lib.fx_trap, ctypes.c_void_p)
            self.step_fn = ctypes.cast(lib.fx_step, ctypes.c_void_p)

    def attach_counter(self, counter_state) -> None:
        """The block counter's state words (counter.py): the C side keeps the count exact."""
        self._counter_state = counter_state
        self.state.counter = ctypes.addressof(counter_state)

    def set_python_trap(self, fn) -> None:
        """The Python trap path, `fn(uch, address, size, entry_ptr)`; the C hook calls it when
        it cannot finish a trap itself."""
        self._py_cb = _TRAP_CB(fn)
        self.state.py_trap = ctypes.cast(self._py_cb, ctypes.c_void_p).value

    def set_python_io(self, fn) -> None:
        """The direct device path, `fn(op, value, icount) -> value read`: IN/OUT that no
        control intercepts, to a port without a latch cell (op = port | size << 16, plus
        IO_IN for IN); `state.io_direct` counts them."""
        self._io_cb = _IO_CB(fn)
        self.state.py_io = ctypes.cast(self._io_cb, ctypes.c_void_p).value
        if self.capi():                 # the same function through the C API (no ctypes)
            self._io_obj = fn
            self.state.py_io_obj = id(fn)

    def set_python_exit(self, fn) -> None:
        """The lean exit path, `fn(reason, address, icount, seq, tsc, rax, rcx, rdx, rip) ->
        LEAN_*`: an exit of a reason marked with `lean_only` runs its Python handler from the
        hook (fastexit.c lean_exit), which counts the exit (exit_count, the per-reason count
        and time); `state.lean` counts them."""
        self._exit_cb = _EXIT_CB(fn)
        self.state.py_exit = ctypes.cast(self._exit_cb, ctypes.c_void_p).value

    def read_snapshot(self, uch) -> None:
        """Read the guest registers into `state.snap` in one batch, as the hook does before
        the Python trap path (the lean path reads only RAX, RCX, RDX and RIP)."""
        if self.lib is not None:
            self.lib.fx_read_snap(uch, ctypes.byref(self.state))

    def capi(self) -> bool:
        """Whether this build calls Python handlers through the CPython C API (fastexit.c
        call_py_exit) rather than through a ctypes callback."""
        lib = self.lib
        return lib is not None and hasattr(lib, "fx_capi") and bool(lib.fx_capi())

    def set_python_exit_capi(self, fn, pend: dict, rcache: dict) -> None:
        """The lean exit path through the C API (only when `capi()`): `fn(reason, address,
        icount, at)`, at = (seq, icount, tsc, rax, rdx), called with the registers the hook
        read (RAX RCX RDX RIP) in `rcache`; it returns LEAN_*, and when the guest resumes the
        hook sends the writes in `pend` (the RIP's among them, if it moved) and empties both
        dicts.  The hook holds no references: this object keeps all three."""
        self._exit_refs = (fn, pend, rcache)
        st = self.state
        st.py_pend, st.py_rcache = id(pend), id(rcache)
        st.py_exit_obj = id(fn)

    # ---- per-address entries -------------------------------------------------------------
    def entry(self, address: int) -> FxEntry:
        """The (stable) entry of a hooked address; the hook's user data."""
        e = self._entries.get(address)
        if e is None:
            e = self._entries[address] = FxEntry()
            e.st = ctypes.addressof(self.state)
        return e

    def forget(self, address: int) -> None:
        """The address is no longer a known instruction (page rescanned, hook removed)."""
        e = self._entries.get(address)
        if e is not None:
            e.kind = K_NONE
            e.block = 0

    def learn(self, address: int, raw: bytes, length: int, mode64: bool,
              io_size: int = 1, bits: int = 0) -> None:
        """The instruction at `address` was decoded as `raw`: the C side may do it from now
        on if it knows it: mode-free encodings, and IN/OUT of `io_size` bytes (an optional
        0x66 prefix, then E4-E7 imm8 or EC-EF) decoded in code of `bits` (16/32/64), which the
        C side does only while the code size is that."""
        e = self._entries.get(address)
        if e is None:
            return
        k = FAST_KINDS.get(raw)
        port = 0
        size = 1
        if k is None:
            op = raw[1:] if raw[:1] == b"\x66" else raw
            if len(op) == 2 and op[0] & ~1 in FAST_IMM:
                k, port = FAST_IMM[op[0] & ~1], op[1]
            elif len(op) == 1 and op[0] & ~1 in (0xEC, 0xEE):
                k = K_IN_DX if op[0] & ~1 == 0xEC else K_OUT_DX
            if k is not None and (op != raw or op[0] & 1):
                size = io_size                  # the operand size depends on the code size
        if k is None:
            e.kind = K_NONE
            return
        e.length = length
        e.mode64 = 1 if mode64 else 0
        e.port = port
        e.size = size
        e.bits = bits if (k in (K_IN_IMM, K_IN_DX, K_OUT_IMM, K_OUT_DX) and size > 1) else 0
        e.kind = k

    def forget_prefixes(self) -> None:
        """Code changed somewhere: the cached block prefixes may be wrong."""
        for e in self._entries.values():
            e.block = 0

    # ---- what the fast path may do -------------------------------------------------------
    def set_fast(self, on: bool) -> None:
        st = self.state
        st.flags = (st.flags | FAST) if on else (st.flags & ~FAST)

    def configure(self, *, rdtsc_exiting: bool, tsc_offsetting: bool, tsc_scaling: bool,
                  io_bitmaps: bool, io_unconditional: bool,
                  bitmap: bytes | None, tsc_per_insn: int, exit_cost: int) -> None:
        st = self.state
        f = st.flags & FAST
        f |= RDTSC_EXITING if rdtsc_exiting else 0
        f |= TSC_OFFSET if tsc_offsetting else 0
        f |= TSC_SCALE if tsc_scaling else 0
        f |= IO_BITMAPS if io_bitmaps else 0
        f |= IO_UNCOND if io_unconditional else 0
        st.tsc_per_insn = tsc_per_insn
        st.exit_cost = exit_cost
        if bitmap is not None:
            ctypes.memmove(self._bitmap, bitmap, 8192)
            self.io_bitmap = bytes(bitmap)
        st.flags = f

    def python_only(self, reason: int, yes: bool) -> None:
        """Whether exits of `reason` must go to Python (a user handler, a trace, not seen yet)."""
        st = self.state
        w, b = divmod(int(reason), 64)
        if yes:
            st.py_mask[w] |= 1 << b
        else:
            st.py_mask[w] &= ~(1 << b)

    def lean_only(self, reason: int, yes: bool) -> None:
        """Whether exits of `reason` call their Python handler from the hook (the lean path)
        instead of doing the exit in C or taking the Python trap path."""
        st = self.state
        w, b = divmod(int(reason), 64)
        if yes:
            st.lean_mask[w] |= 1 << b
        else:
            st.lean_mask[w] &= ~(1 << b)

    def all_python(self) -> None:
        for i in range(NREASONS // 64):
            self.state.py_mask[i] = (1 << 64) - 1

    # ---- monitor-trap-flag stepping ----------------------------------------------------------
    def mtf_begin(self) -> None:
        st = self.state
        st.mtf_started = st.mtf_done = 0
        st.mtf_skip = (1 << 64) - 1
        st.mtf_on = 1

    def mtf_end(self) -> int:
        """Stop; the MTF exits the C side did since mtf_begin."""
        st = self.state
        st.mtf_on = 0
        return st.mtf_done

    # ---- CPUID results ----------------------------------------------------------------------
    def cpuid_put(self, leaf: int, sub: int | None, regs) -> None:
        """Cache a CPUID result; sub None = the same for every ECX."""
        key = (leaf, sub)
        if key in self._cpuid_keys:                 # (every exit with the default handler)
            return
        st = self.state
        n = st.ncpuid
        if n >= NCPUID:
            return
        self._cpuid_keys.add(key)
        c = st.cpuid[n]
        c.leaf, c.sub, c.any = leaf & 0xFFFFFFFF, (sub or 0) & 0xFFFFFFFF, 1 if sub is None else 0
        for i in range(4):
            c.r[i] = regs[i] & 0xFFFFFFFF
        c.used = 1
        st.ncpuid = n + 1

    def cpuid_remember(self, leaf: int, sub: int, regs) -> None:
        """The default handler's result for EAX = leaf, ECX = sub (a bounded memo)."""
        if len(self.cpuid_memo) < 4 * NCPUID:
            self.cpuid_memo[(leaf, sub)] = tuple(regs)

    def cpuid_clear(self) -> None:
        self.state.ncpuid = 0
        self._cpuid_keys.clear()
        self.cpuid_memo.clear()

    # ---- latch ports ---------------------------------------------------------------------------
    def add_latch(self, port: int, wmask: int, read_cell: bool, value: int = 0) -> FxLatch:
        """A port whose device is one cell: writes keep `value & wmask`, reads return the
        cell (read_cell) or all ones.  The device reads and writes the returned cell."""
        st = self.state
        i = len(self._latch_ports)
        if port in self._latch_ports or i >= NLATCH:
            raise ValueError(f"cannot add a latch for port {port:#x}")
        c = st.latch[i]
        c.port, c.wmask, c.read_cell, c.value = port, wmask, 1 if read_cell else 0, value
        self._latch_ports[port] = i
        return c

    # ---- statistics ------------------------------------------------------------------------------
    def native_count(self, reason: int) -> int:
        return self.state.stats[reason]

    def native_seconds(self, reason: int) -> float:
        return self.state.stats_ns[reason] * 1e-9


# ---- event delivery through the guest IDT in C (fastexit.c fx_deliver) --------------------
FXD_VERSION = 1
FXD_SOFT = 1            # software INT n / INT3 / INTO: the gate's DPL is checked
FXD_EC = 2              # an error code is pushed
FXD_FAULT = 8           # a fault-class exception: RF set in the RFLAGS image pushed
FXD_HERE = 4            # an external interrupt at the engine's block boundary (see the C file)


class FxDlv(ctypes.Structure):
    _fields_ = [("version", _u64), ("uc", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("env", ctypes.c_void_p), ("ctx_save", ctypes.c_void_p),
                ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
                ("write_batch", ctypes.c_void_p), ("mem_read", ctypes.c_void_p),
                ("mem_write", ctypes.c_void_p), ("translate", ctypes.c_void_p),
                ("rsp_id", _u64), ("rflags_id", _u64), ("rip_id", _u64),
                ("mem_size", _u64), ("frame_phys", _u64), ("frame_len", _u64),
                ("new_rip", _u64), ("new_rsp", _u64), ("new_rflags", _u64),
                ("delivered", _u64)]


def event_deliverer(uch: int, ctx_addr: int, env_offset: int, mem_size: int,
                    rsp_id: int, rflags_id: int, rip_id: int):
    """The C delivery of the common case (fastexit.c fx_deliver) for one engine, as
    `(fn, block)`: `fn(block, vector, how, error_code, return_linear) -> 1` when it delivered
    the event (RSP, RFLAGS, RIP and the frame written; `block.frame_phys`/`frame_len` say
    where the frame went), 0 when the Python path must (nothing changed).  None without the
    helper (or with a helper built before fx_deliver existed)."""
    lib = library()
    if lib is None or not hasattr(lib, "fx_deliver") or not hasattr(lib, "fx_dlv_size"):
        return None
    if lib.fx_dlv_size() != ctypes.sizeof(FxDlv) | (FXD_VERSION << 16):
        return None
    from unicorn.unicorn_py3.unicorn import uclib
    d = FxDlv()
    d.version = FXD_VERSION
    d.uc = uch
    d.ctx = ctx_addr
    d.env = ctx_addr + env_offset
    fn_addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value     # noqa: E731
    d.ctx_save = fn_addr(uclib.uc_context_save)
    d.reg_read = fn_addr(uclib.uc_reg_read)
    d.reg_write = fn_addr(uclib.uc_reg_write)
    d.write_batch = fn_addr(uclib.uc_reg_write_batch)
    d.mem_read = fn_addr(uclib.uc_mem_read)
    d.mem_write = fn_addr(uclib.uc_mem_write)
    d.translate = fn_addr(uclib.uc_vmem_translate)
    d.rsp_id, d.rflags_id, d.rip_id = rsp_id, rflags_id, rip_id
    d.mem_size = mem_size
    fn = lib.fx_deliver
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(FxDlv), _u64, _u64, _u64, _u64]
    return fn, d


# ---- a device timer's interrupt at the block counter's soft deadline (fastexit.c fx_soft_deadline)
FXS_VERSION = 5
TICK_STOP = -1          # tick(): the run loop must look (the engine stops before the block)
TICK_DONE = -2          # tick(): done here (the soft deadline set, or the engine stopped)
REFLECTED = 0x100       # tick(): with the vector -- an exit's handler reflected it (not INTA)


class FxSoft(ctypes.Structure):
    _fields_ = [("version", _u64), ("st", ctypes.c_void_p), ("dlv", ctypes.c_void_p),
                ("tick_obj", ctypes.c_void_p), ("acked_obj", ctypes.c_void_p),
                ("taken", _u64), ("vcpu_obj", ctypes.c_void_p), ("board_obj", ctypes.c_void_p),
                ("clock_obj", ctypes.c_void_p), ("lapic_obj", ctypes.c_void_p),
                ("master_obj", ctypes.c_void_p), ("eoi_port", _u64), ("eoi_done", _u64),
                ("turn_on", _u64), ("wall_deadline_ns", _u64), ("pit_timer_obj", ctypes.c_void_p),
                ("pit_ch0_obj", ctypes.c_void_p), ("hpet_obj", ctypes.c_void_p),
                ("ioapic_obj", ctypes.c_void_p), ("serial_obj", ctypes.c_void_p),
                ("slave_obj", ctypes.c_void_p), ("leg_rt_cnf", _u64), ("lvt_lint0", _u64),
                ("lvt_masked", _u64), ("base_en", _u64), ("io_masked", _u64), ("io_level", _u64),
                ("pit_hz", _u64), ("pit_gsi", _u64), ("turns", _u64), ("turn_exit", _u64),
                ("extint_reason", _u64)] + [
        (n + "_d", ctypes.c_void_p) for n in ("vcpu", "board", "clock", "lapic", "master", "slave",
                                              "ch0", "hpet", "ioapic", "serial")]


def soft_taker(fx: "FastExit", dlv, tick, acked, vcpu=None, board=None):
    """The soft-deadline function in C (fastexit.c fx_soft_deadline) for the vCPU whose state
    block is `fx` and whose C delivery block is `dlv`, as `(function address, FxSoft)`:
    `tick(icount, tsc)` returns the vector to deliver, TICK_STOP or TICK_DONE;
    `acked(vector, frame_phys, icount, tsc)` the next soft deadline.  The block keeps the two
    callables alive.  With the vCPU and its board, the master 8259's plain EOI is done in C too
    (fastexit.c pic_eoi, on the board's objects).  None when this build has no C API (the
    ctypes soft function then)."""
    lib = fx.lib
    if lib is None or not fx.capi() or not hasattr(lib, "fx_soft_size") \
            or lib.fx_soft_size() != ctypes.sizeof(FxSoft) | (FXS_VERSION << 16):
        return None
    s = FxSoft()
    s.version = FXS_VERSION
    s.st = ctypes.addressof(fx.state)
    s.dlv = ctypes.addressof(dlv)
    s._objs = (tick, acked)
    s.tick_obj, s.acked_obj = id(tick), id(acked)
    if vcpu is not None and board is not None:
        from ..clock import PIT_HZ
        from ..devices import hpet, ioapic, lapic
        from ..devices.board import PIT_IRQ, isa_to_gsi
        # (borrowed: the vCPU owns this block and the board; the board owns the rest)
        s.vcpu_obj, s.board_obj, s.clock_obj = id(vcpu), id(board), id(board.clock)
        s.lapic_obj, s.master_obj = id(board.lapic), id(board.pic.master)
        s.eoi_port = board.pic.MASTER_PORT
        # the whole turn of the PIT's interrupt through the 8259 (fastexit.c c_turn)
        s.pit_timer_obj, s.pit_ch0_obj = id(board.pit._timer), id(board.pit.channels[0])
        s.hpet_obj, s.ioapic_obj = id(board.hpet), id(board.ioapic)
        s.serial_obj, s.slave_obj = id(board.serial), id(board.pic.slave)
        s.leg_rt_cnf, s.lvt_lint0 = hpet.LEG_RT_CNF, lapic.LVT_LINT0
        s.lvt_masked, s.base_en = lapic.LVT_MASKED, lapic.BASE_EN
        s.io_masked, s.io_level = ioapic.MASKED, ioapic.LEVEL
        s.pit_hz, s.pit_gsi = PIT_HZ, isa_to_gsi(PIT_IRQ)
        from ...vmx.exits import Exit
        s.extint_reason = Exit.EXTERNAL_INTERRUPT
        # their instance dicts: the C side reads and writes their plain attributes there
        for name, obj in (("vcpu", vcpu), ("board", board), ("clock", board.clock),
                          ("lapic", board.lapic), ("master", board.pic.master),
                          ("slave", board.pic.slave), ("ch0", board.pit.channels[0]),
                          ("hpet", board.hpet), ("ioapic", board.ioapic), ("serial", board.serial)):
            setattr(s, name + "_d", id(vars(obj)))
    return ctypes.cast(lib.fx_soft_deadline, ctypes.c_void_p).value, s
