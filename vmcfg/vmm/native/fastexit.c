/* fastexit.c -- the VM-exit fast path of vmcfg's emulated VMM (issue 14).
 *
 * One function, fx_trap, is registered with Unicorn as the UC_HOOK_CODE
 * callback at every trapped instruction address (user data: that address's
 * fx_entry).  For the common cases it does the whole trap in C:
 *
 *   CPUID        (exit 10)  result from a cache the Python side fills on a miss
 *   RDTSC        (exit 16 with rdtsc_exiting, otherwise emulated): the virtual TSC
 *   IN/OUT byte  (exit 30 when the I/O bitmap / unconditional I/O exiting says so,
 *                 otherwise emulated): only ports served by a latch cell
 *   IN/OUT       that no control intercepts, to any other port (byte, word, dword):
 *                 the direct device path -- one call of the Python device callback
 *                 (py_io: the bus and its devices, the one home of their state),
 *                 no exit record, no register batch (see io_direct below)
 *
 * counting the exit (exit_count, per-reason count and host time), keeping the
 * retired-instruction count exact (the block counter's words, see counter.py)
 * and advancing RIP.  Anything else -- a user handler, a trace, a pending
 * event, a cache miss, an instruction this file does not know -- goes to the
 * Python callback (the VMM's full path): the guest registers are read in one
 * batch before the call, and the writes the Python side queued are sent in
 * one batch after it.
 *
 * No Unicorn header is needed: the Unicorn functions are passed in as
 * pointers.  Built by setup.py as an optional extension and loaded with
 * ctypes (vmcfg/vmm/native/__init__.py); without it the same logic runs in
 * Python.  The structures mirror the ctypes ones in __init__.py: keep them
 * in step (FX_VERSION).
 */
/* With the CPython headers (a normal build: setup.py builds this file as an extension), the
 * lean exit path calls its Python handler straight through the C API (call_py_exit below);
 * without them, through the ctypes callback py_exit.  The library is loaded into the running
 * interpreter with ctypes, so the C API's symbols resolve there. */
#if defined(__has_include)
#if __has_include(<Python.h>)
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define FX_CAPI 1
#endif
#endif
#include <stdint.h>
#include <string.h>
#include <time.h>

#define FX_VERSION 9
#define FX_NSNAP 18            /* RAX..R15, RIP, RFLAGS */
#define FX_NWRITE 32
#define FX_NREASONS 128
#define FX_NCPUID 64
#define FX_NLATCH 8

/* flags */
#define FX_FAST 1u             /* the fast path may run (the run loop decides per entry) */
#define FX_RDTSC_EXITING 2u
#define FX_TSC_OFFSET 4u
#define FX_TSC_SCALE 8u
#define FX_IO_BITMAPS 16u
#define FX_IO_UNCOND 32u

/* entry kinds */
enum { K_NONE = 0, K_CPUID, K_RDTSC, K_OUT_IMM, K_IN_IMM, K_OUT_DX, K_IN_DX };

/* block counter words (counter.py) */
enum { W_COUNTER = 0, W_LAST_ADDR = 5, W_LAST_SIZE = 6, W_STOP = 8, W_LAST_N = 10, W_SOFT = 14,
       W_SOFT_CTX = 16 };
#define NO_DEADLINE 0x7FFFFFFFFFFFFFFFull

/* snapshot slots */
enum { S_RAX = 0, S_RCX = 1, S_RDX = 2, S_RBX = 3, S_RIP = 16, S_RFLAGS = 17 };

enum { R_CPUID = 10, R_RDTSC = 16, R_IO = 30, R_MTF = 37 };

typedef void uc_engine;
typedef int (*reg_read_t)(uc_engine *, int, void *);
typedef int (*reg_write_t)(uc_engine *, int, const void *);
typedef int (*read_batch_t)(uc_engine *, int *, void **, int);
typedef int (*write_batch_t)(uc_engine *, int *, void *const *, int);
typedef void (*py_trap_t)(uc_engine *, uint64_t, uint32_t, void *);
/* the direct device path: op = port | size << 16 | in << 24, the value an OUT writes, the
 * instructions retired before the access; returns what an IN reads */
typedef uint64_t (*py_io_t)(uint64_t op, uint64_t value, uint64_t icount);
/* a user exit handler called from the hook (lean_exit below): the exit reason, the linear
 * address of the instruction, the instructions retired before it, the exit's number and the
 * VMM's TSC at the exit (both counting it), RAX RCX RDX and the RIP register.  Returns
 * LEAN_RESUMED (the guest resumes at st->pc, the writes queued sent: the instruction
 * retired), LEAN_COUNTED
 * (the exit happened, the Python side set the count: the run ends, a fault, ...) or
 * LEAN_NONE (the Python side took its full trap path instead: this exit is not counted here) */
typedef uint64_t (*py_exit_t)(uint64_t reason, uint64_t address, uint64_t icount, uint64_t seq,
                              uint64_t tsc, uint64_t rax, uint64_t rcx, uint64_t rdx,
                              uint64_t rip);
enum { LEAN_RESUMED = 0, LEAN_COUNTED = 1, LEAN_NONE = 2 };

typedef struct {
    uint32_t leaf, sub, any, used;
    uint32_t r[4];             /* eax ebx ecx edx */
} fx_cpuid;

typedef struct {
    uint64_t port;             /* 0xFFFFFFFF = unused */
    uint64_t value;            /* the cell: what the device holds */
    uint64_t wmask;            /* bits a write keeps */
    uint64_t read_cell;        /* 1: reads return the cell; 0: all ones */
} fx_latch;

typedef struct fx_state {
    uint64_t version;
    uint64_t flags;
    uint64_t py_mask[FX_NREASONS / 64];   /* exit reasons only the Python side may handle */
    uint64_t *counter;
    uint64_t exit_count;
    uint64_t idle_ticks;
    uint64_t tsc_adjust;
    uint64_t tsc_per_insn;
    uint64_t exit_cost;
    uint64_t tsc_offset;
    uint64_t tsc_mult;
    uint8_t *io_bitmap;        /* 8 KiB, one bit per port */
    reg_read_t reg_read;
    reg_write_t reg_write;
    read_batch_t read_batch;
    write_batch_t write_batch;
    py_trap_t py_trap;
    uint64_t cr4_id;
    uint64_t reg_ids[FX_NSNAP];
    uint64_t snap[FX_NSNAP];
    uint64_t nwrite;
    uint64_t wids[FX_NWRITE];
    uint64_t wvals[FX_NWRITE];
    uint64_t pc_write;
    uint64_t pc;
    uint64_t stats[FX_NREASONS];
    uint64_t stats_ns[FX_NREASONS];
    uint64_t fast, slow;       /* traps done here / sent to Python */
    uint64_t ncpuid;
    fx_cpuid cpuid[FX_NCPUID];
    fx_latch latch[FX_NLATCH];
    uint64_t mtf_on;           /* monitor-trap-flag stepping in C (fx_step is hooked) */
    uint64_t mtf_started;      /* an instruction began in this emu_start */
    uint64_t mtf_skip;         /* fx_trap did the boundary at this address already */
    uint64_t mtf_done;         /* MTF exits done in this emu_start */
    /* direct device I/O (vcpu/deviceio.py) */
    py_io_t py_io;             /* 0: none (every non-latch port takes the Python trap path) */
    uint64_t bits;             /* the code size (16/32/64) the Python side saw last */
    uint64_t io_direct;        /* accesses py_io served */
    void *py_io_obj;           /* py_io as a Python callable, called through the C API when
                                * this build has it (borrowed: the Python side keeps it) */
    /* user exit handlers called from the hook (lean_exit) */
    uint64_t lean_mask[FX_NREASONS / 64];  /* reasons whose Python handler runs from here */
    py_exit_t py_exit;
    uint64_t lean;             /* exits py_exit served */
    /* the same handler as a Python callable, called through the C API when this build has
     * it (fx_capi): fn(reason, address, icount, at) with at = (seq, icount, tsc, rax, rdx)
     * and the registers read (RAX RCX RDX RIP) put in the vCPU's register cache first;
     * it returns LEAN_*, its register writes in the vCPU's pending dict (the RIP among them
     * when it moved), which this side sends and empties (call_py_exit).  All three are
     * borrowed references: the Python side keeps them. */
    void *py_exit_obj;
    void *py_pend;             /* dict {register id: value}: the writes */
    void *py_rcache;           /* dict {register id: value}: registers known */
} fx_state;

typedef struct fx_entry {
    fx_state *st;
    uint64_t kind;
    uint64_t length;
    uint64_t mode64;           /* RDTSC: write EAX/EDX zero-extended (64-bit mode) */
    uint64_t block;            /* the block start `prefix` was counted from (0 = none yet) */
    uint64_t prefix;           /* instructions from `block` to this address */
    uint64_t port;             /* imm8 forms */
    uint64_t size;             /* IN/OUT: bytes accessed (1, 2, 4) */
    uint64_t bits;             /* ... for the code size it was decoded in (0: any) */
} fx_entry;

#ifdef FX_CAPI
static int64_t call_ints(PyObject *fn, const uint64_t *a, int n);
#endif

/* The soft-deadline turn's block (fx_soft_deadline below), also the master 8259's EOI done
 * here (pic_eoi): counter word W_SOFT_CTX points at it. */
#define FXS_VERSION 5
typedef struct fx_soft {
    uint64_t version;
    struct fx_state *st;       /* exit_count, idle_ticks, tsc_adjust: the VMM's TSC */
    struct fx_dlv *dlv;
    void *tick_obj;            /* the Python callables (borrowed: the Python side keeps them) */
    void *acked_obj;
    uint64_t taken;            /* interrupts delivered here */
    /* pic_eoi: the Python objects it reads and writes (borrowed), 0 = off */
    void *vcpu_obj, *board_obj, *clock_obj, *lapic_obj, *master_obj;
    uint64_t eoi_port;         /* the master's command port */
    uint64_t eoi_done;         /* EOIs done here */
    /* c_turn: the plain PIT -> 8259 -> CPU interrupt, done here on the objects */
    uint64_t turn_on;          /* this run allows it (the vCPU's _soft_here_ok, virtual clock) */
    uint64_t wall_deadline_ns; /* CLOCK_MONOTONIC ns of the run's wall-clock limit, 0 = none */
    void *pit_timer_obj, *pit_ch0_obj, *hpet_obj, *ioapic_obj, *serial_obj, *slave_obj;
    /* the devices' constants, from their modules (the homes of those facts) */
    uint64_t leg_rt_cnf, lvt_lint0, lvt_masked, base_en, io_masked, io_level, pit_hz, pit_gsi;
    uint64_t turns;            /* interrupts the whole turn did here */
    /* external-interrupt exiting with acknowledge, to the default handler, which reflects the
     * interrupt (leanexit._lean_extint): the exit is counted here under `extint_reason` */
    uint64_t turn_exit;        /* this run exits on it (the vCPU's _extint_lean) */
    uint64_t extint_reason;
    /* the same objects' instance dicts (their plain attributes, read and written without the
     * type's attribute lookup: none of the names used here is a property or a slot) */
    void *vcpu_d, *board_d, *clock_d, *lapic_d, *master_d, *slave_d, *ch0_d, *hpet_d,
         *ioapic_d, *serial_d;
} fx_soft;
#ifdef FX_CAPI
static int pic_eoi(struct fx_soft *s, uint64_t ic);
#endif

int fx_version(void) { return FX_VERSION; }
int fx_state_size(void) { return (int)sizeof(fx_state); }
int fx_entry_size(void) { return (int)sizeof(fx_entry); }

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int py_only(const fx_state *st, unsigned reason)
{
    return (st->py_mask[reason >> 6] >> (reason & 63)) & 1;
}

static inline int lean_on(const fx_state *st, unsigned reason)
{
    return (st->py_exit || st->py_exit_obj) && ((st->lean_mask[reason >> 6] >> (reason & 63)) & 1);
}

static inline uint64_t rd(uc_engine *uc, fx_state *st, int slot)
{
    uint64_t v = 0;
    st->reg_read(uc, (int)st->reg_ids[slot], &v);
    return v;
}

static const fx_cpuid *cpuid_find(const fx_state *st, uint32_t leaf, uint32_t sub)
{
    uint64_t n = st->ncpuid < FX_NCPUID ? st->ncpuid : FX_NCPUID;
    for (uint64_t i = 0; i < n; i++) {
        const fx_cpuid *c = &st->cpuid[i];
        if (c->used && c->leaf == leaf && (c->any || c->sub == sub))
            return c;
    }
    return 0;
}

static fx_latch *latch_find(fx_state *st, uint64_t port)
{
    for (int i = 0; i < FX_NLATCH; i++)
        if (st->latch[i].port == port)
            return &st->latch[i];
    return 0;
}

static inline int io_intercepted(const fx_state *st, uint64_t port)
{
    if (st->flags & FX_IO_BITMAPS)
        return st->io_bitmap ? (st->io_bitmap[port >> 3] >> (port & 7)) & 1 : 1;
    return (st->flags & FX_IO_UNCOND) != 0;
}

/* Any port of a `size`-byte access intercepted (an access past 0xFFFF exits with bitmaps). */
static inline int io_intercepted_n(const fx_state *st, uint64_t port, uint64_t size)
{
    if (st->flags & FX_IO_BITMAPS) {
        if (!st->io_bitmap || port + size - 1 > 0xFFFF)
            return 1;
        for (uint64_t p = port; p < port + size; p++)
            if ((st->io_bitmap[p >> 3] >> (p & 7)) & 1)
                return 1;
        return 0;
    }
    return (st->flags & FX_IO_UNCOND) != 0;
}

/* IN/OUT that no control intercepts, to a port without a latch cell: the device's callback
 * does the access (and stops the engine itself when an interrupt became deliverable or the
 * run ends).  For IN, *id / *val get the register write: AL, AX or EAX (zero-extended in
 * 64-bit code, as a 32-bit register write is).  0 = an exit or no callback: Python's trap
 * path (nothing done here). */
static int io_direct(uc_engine *uc, fx_state *st, const fx_entry *e, uint64_t port, int in,
                     uint64_t ic, int *id, uint64_t *val)
{
    uint64_t size = e->size;
    if (!st->py_io || io_intercepted_n(st, port, size))
        return 0;
    uint64_t rax = rd(uc, st, S_RAX);
#ifdef FX_CAPI
    struct fx_soft *s = (struct fx_soft *)st->counter[W_SOFT_CTX];
    if (s && s->master_obj && !in && size == 1 && port == s->eoi_port && (rax & 0xFF) == 0x20
            && pic_eoi(s, ic)) {
        st->io_direct++;
        return 1;
    }
#endif
    uint64_t mask = size >= 4 ? 0xFFFFFFFFull : (1ull << (8 * size)) - 1;
    uint64_t op = port | (size << 16) | ((uint64_t)in << 24), v;
#ifdef FX_CAPI
    if (st->py_io_obj) {               /* the same callable through the C API: no ctypes */
        uint64_t a[3] = {op, rax & mask, ic};
        PyGILState_STATE g = PyGILState_Ensure();
        v = (uint64_t)call_ints((PyObject *)st->py_io_obj, a, 3);
        PyGILState_Release(g);
    } else
#endif
    v = st->py_io(op, rax & mask, ic);
    if (in) {
        *id = (int)st->reg_ids[S_RAX];
        *val = (size == 4 && e->bits == 64) ? (v & mask) : ((rax & ~mask) | (v & mask));
    }
    st->io_direct++;
    return 1;
}

/* The virtual TSC as the guest reads it (Vcpu._tsc_at + guest_tsc). */
static inline uint64_t guest_tsc(const fx_state *st, uint64_t icount)
{
    uint64_t t = icount * st->tsc_per_insn + st->exit_count * st->exit_cost
                 + st->idle_ticks + st->tsc_adjust;
    if (st->flags & FX_TSC_OFFSET) {
        if (st->flags & FX_TSC_SCALE)
            t = (uint64_t)(((unsigned __int128)t * st->tsc_mult) >> 48);
        t += st->tsc_offset;
    }
    return t;
}

/* Send the register writes the Python side queued (wids/wvals, then the PC) in one batch. */
static void flush_queued(uc_engine *uc, fx_state *st)
{
    uint64_t n = st->nwrite < FX_NWRITE ? st->nwrite : FX_NWRITE;
    if (n) {
        int wid[FX_NWRITE];
        void *wp[FX_NWRITE];
        for (uint64_t i = 0; i < n; i++) {
            wid[i] = (int)st->wids[i];
            wp[i] = &st->wvals[i];
        }
        st->write_batch(uc, wid, wp, (int)n);
        st->nwrite = 0;
    }
    if (st->pc_write) {
        st->pc_write = 0;
        st->reg_write(uc, (int)st->reg_ids[S_RIP], &st->pc);
    }
}

/* The guest registers into snap in one batch (what fx_trap reads before the Python path). */
void fx_read_snap(uc_engine *uc, fx_state *st)
{
    int ids[FX_NSNAP];
    void *ptrs[FX_NSNAP];
    for (int i = 0; i < FX_NSNAP; i++) {
        ids[i] = (int)st->reg_ids[i];
        ptrs[i] = &st->snap[i];
    }
    st->read_batch(uc, ids, ptrs, FX_NSNAP);
}

int fx_capi(void)
{
#ifdef FX_CAPI
    return 1;
#else
    return 0;
#endif
}

/* What the Python side may also answer (next to LEAN_RESUMED...): the guest resumes as with
 * LEAN_RESUMED, but the engine stops first (emu_stop: the run loop must look at something),
 * so the device timer's soft deadline is the run loop's to set again. */
enum { LEAN_STOPPING = 3 };

#ifdef FX_CAPI
/* fn(*a) with n (at most 4) unsigned ints, the GIL held; the answer as a signed int (-1 on any
 * error, which is a bug in the VMM: the Python side catches everything and reports it through
 * the run loop; NO_DEADLINE for an answer past 2^63 - 1) */
static int64_t call_ints(PyObject *fn, const uint64_t *a, int n)
{
    PyObject *slots[5], **args = slots + 1;
    int k = 0;
    for (; k < n; k++)
        if (!(args[k] = PyLong_FromUnsignedLongLong(a[k])))
            break;
    PyObject *res = k == n ? PyObject_Vectorcall(fn, args, (size_t)n | PY_VECTORCALL_ARGUMENTS_OFFSET, 0) : 0;
    for (int i = 0; i < k; i++)
        Py_DECREF(args[i]);
    int64_t r = -1;
    if (res && PyLong_Check(res)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(res, &overflow);
        r = overflow > 0 ? (int64_t)NO_DEADLINE : overflow < 0 ? -1 : (int64_t)v;
    }
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(res);
    return r;
}

/* Queue one register write from the handler's dict; a full queue goes out first. */
static void queue_write(uc_engine *uc, fx_state *st, uint64_t id, uint64_t value)
{
    if (st->nwrite >= FX_NWRITE) {
        uint64_t pc_write = st->pc_write;
        st->pc_write = 0;
        flush_queued(uc, st);
        st->pc_write = pc_write;
    }
    st->wids[st->nwrite] = id;
    st->wvals[st->nwrite++] = value;
}

/* The handler through the C API: the GIL taken here (the binding released it around
 * emu_start); the registers read go into the vCPU's register cache, the call gets four
 * arguments (reason, address, icount, (seq, icount, tsc, rax, rdx)), and when the guest
 * resumes the writes come from the vCPU's pending dict: the RIP's (if the handler moved it)
 * becomes st->pc, the others are queued; both dicts are emptied.  A Python error here is a
 * bug in the VMM (the handler catches everything): it is reported as unraisable and the
 * exit counted (the run loop ends the run). */
static uint64_t call_py_exit(uc_engine *uc, fx_state *st, uint64_t reason, uint64_t address,
                             uint64_t ic, uint64_t seq, uint64_t tsc)
{
    static const int slot[4] = {S_RAX, S_RCX, S_RDX, S_RIP};
    uint64_t r = LEAN_COUNTED;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *rc = (PyObject *)st->py_rcache, *pend = (PyObject *)st->py_pend;
    PyObject *val[4] = {0, 0, 0, 0}, *slots[5] = {0, 0, 0, 0, 0}, **args = slots + 1;
    PyObject *res = 0;
    int ok = 1;
    for (int i = 0; i < 4 && ok; i++) {
        PyObject *k = PyLong_FromUnsignedLongLong(st->reg_ids[slot[i]]);
        val[i] = PyLong_FromUnsignedLongLong(st->snap[slot[i]]);
        ok = k && val[i] && PyDict_SetItem(rc, k, val[i]) == 0;
        Py_XDECREF(k);
    }
    if (ok) {
        PyObject *s = PyLong_FromUnsignedLongLong(seq), *t = PyLong_FromUnsignedLongLong(tsc);
        args[0] = PyLong_FromUnsignedLongLong(reason);
        args[1] = PyLong_FromUnsignedLongLong(address);
        args[2] = PyLong_FromUnsignedLongLong(ic);
        if (s && t && args[2])
            args[3] = PyTuple_Pack(5, s, args[2], t, val[0], val[2]);
        Py_XDECREF(s);
        Py_XDECREF(t);
        if (args[0] && args[1] && args[3])
            res = PyObject_Vectorcall((PyObject *)st->py_exit_obj, args,
                                      4 | PY_VECTORCALL_ARGUMENTS_OFFSET, 0);
        for (int i = 0; i < 4; i++)
            Py_XDECREF(args[i]);
    }
    for (int i = 0; i < 4; i++)
        Py_XDECREF(val[i]);
    if (res && PyLong_Check(res)) {
        r = PyLong_AsUnsignedLongLongMask(res);
        if (r == LEAN_RESUMED || r == LEAN_STOPPING) {
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            uint64_t rip_id = st->reg_ids[S_RIP];
            st->pc = st->snap[S_RIP];  /* RIP unchanged: the instruction runs again */
            while (PyDict_Next(pend, &pos, &k, &v)) {
                uint64_t id = PyLong_AsUnsignedLongLongMask(k);
                if (id == rip_id)
                    st->pc = PyLong_AsUnsignedLongLongMask(v);
                else
                    queue_write(uc, st, id, PyLong_AsUnsignedLongLongMask(v));
            }
            PyDict_Clear(pend);
        }
    }
    PyDict_Clear(rc);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)st->py_exit_obj);
    Py_XDECREF(res);
    PyGILState_Release(g);
    return r;
}
#endif

/* An exit whose handler is a Python one (lean_mask): one call of py_exit from the hook, the
 * exit decoded here (reason, the instructions retired before it, the TSC at the exit) and the
 * guest registers it depends on read in one batch; the writes the handler made go back in
 * one batch.  The exit is counted here (exit_count, and the per-reason count and host time:
 * the whole call).  The engine goes on unless the Python side stopped it (something only
 * the run loop can do: an event to deliver, changed controls, the end of the run); when it
 * goes on, the exit's virtual time moves the device timer's soft deadline sooner, as for the
 * exits done in C (fast below).  The Python side may still take its full trap path: then it
 * takes exit_count back and returns LEAN_NONE. */
static int lean_exit(uc_engine *uc, fx_state *st, uint64_t address, unsigned reason, uint64_t ic)
{
    /* only what the call passes: should the Python side take its full trap path, it reads
     * the whole snapshot first (fx_read_snap) */
    static const int slot[4] = {S_RAX, S_RCX, S_RDX, S_RIP};
    int ids[4];
    void *ptrs[4];
    for (int i = 0; i < 4; i++) {
        ids[i] = (int)st->reg_ids[slot[i]];
        ptrs[i] = &st->snap[slot[i]];
    }
    st->read_batch(uc, ids, ptrs, 4);
    st->nwrite = 0;
    st->pc_write = 0;
    uint64_t t0 = now_ns();
    uint64_t seq = ++st->exit_count;
    st->stats[reason]++;               /* a handler that looks sees its own exit counted */
    /* the VMM's TSC with this exit counted (Vcpu._tsc_at) */
    uint64_t tsc = ic * st->tsc_per_insn + seq * st->exit_cost + st->idle_ticks + st->tsc_adjust;
    uint64_t r;
#ifdef FX_CAPI
    if (st->py_exit_obj && st->py_pend && st->py_rcache)
        r = call_py_exit(uc, st, reason, address, ic, seq, tsc);
    else
#endif
    r = st->py_exit(reason, address, ic, seq, tsc, st->snap[S_RAX], st->snap[S_RCX],
                    st->snap[S_RDX], st->snap[S_RIP]);
    int resumed = r == LEAN_RESUMED || r == LEAN_STOPPING;
    if (resumed)
        st->pc_write = 1;              /* st->pc: the RIP to resume at, always set then */
    flush_queued(uc, st);
    if (r != LEAN_NONE) {
        st->stats_ns[reason] += now_ns() - t0;
        st->lean++;
    } else {
        st->stats[reason]--;
    }
    if (resumed) {
        uint64_t *ctr = st->counter;
        ctr[W_COUNTER] = ic + 1;
        ctr[W_LAST_ADDR] = ctr[W_LAST_SIZE] = ctr[W_LAST_N] = 0;
        uint64_t soft = ctr[W_SOFT];
        if (r == LEAN_RESUMED && soft != NO_DEADLINE) {
            uint64_t d = st->exit_cost / st->tsc_per_insn;
            ctr[W_SOFT] = soft > d ? soft - d : 0;
        }
    }
    return 1;
}

/* The whole trap in C; 0 = leave it to Python (nothing has been changed then). */
static int fast(uc_engine *uc, uint64_t address, fx_entry *e, fx_state *st)
{
    uint64_t *ctr = st->counter;
    if (ctr[W_STOP])
        return 0;
    uint64_t a = ctr[W_LAST_ADDR], sz = ctr[W_LAST_SIZE];
    uint64_t ic = ctr[W_COUNTER];
    if (sz && a <= address && address < a + sz) {
        if (e->block != a)
            return 0;
        ic = ic - ctr[W_LAST_N] + e->prefix;
    }
    uint64_t rip = rd(uc, st, S_RIP);
    uint64_t nrip = rip + e->length;
    if ((rip <= 0xFFFF && nrip > 0xFFFF) || (rip <= 0xFFFFFFFFu && nrip > 0xFFFFFFFFu))
        return 0;                       /* the IP may wrap in 16/32-bit code: Python */
    int ids[4];
    uint64_t vals[4];
    int nw = 0;
    unsigned reason = 0;                /* 0: no exit */
    uint64_t t0 = 0;

    switch (e->kind) {
    case K_CPUID: {
        if (lean_on(st, R_CPUID))
            return lean_exit(uc, st, address, R_CPUID, ic);
        uint32_t leaf = (uint32_t)rd(uc, st, S_RAX), sub = (uint32_t)rd(uc, st, S_RCX);
        const fx_cpuid *c;
        if (py_only(st, R_CPUID) || !(c = cpuid_find(st, leaf, sub)))
            return 0;
        reason = R_CPUID;
        t0 = now_ns();
        st->exit_count++;
        for (int i = 0; i < 4; i++) {
            static const int slot[4] = {S_RAX, S_RBX, S_RCX, S_RDX};
            ids[nw] = (int)st->reg_ids[slot[i]];
            vals[nw++] = c->r[i];
        }
        if (leaf == 1 && (c->r[2] & (1u << 26))) {      /* CPUID.1:ECX.OSXSAVE = CR4.OSXSAVE */
            uint64_t cr4 = 0;
            st->reg_read(uc, (int)st->cr4_id, &cr4);
            vals[2] = (vals[2] & ~(1ull << 27)) | (((cr4 >> 18) & 1) << 27);
        }
        break;
    }
    case K_RDTSC: {
        uint64_t cr4 = 0;
        st->reg_read(uc, (int)st->cr4_id, &cr4);
        if (cr4 & 4)                    /* CR4.TSD: #GP at CPL > 0, which needs the CPL: Python */
            return 0;
        if (st->flags & FX_RDTSC_EXITING) {
            if (lean_on(st, R_RDTSC))
                return lean_exit(uc, st, address, R_RDTSC, ic);
            if (py_only(st, R_RDTSC))
                return 0;
            reason = R_RDTSC;
        }
        if (reason) {
            t0 = now_ns();
            st->exit_count++;
        }
        uint64_t t = guest_tsc(st, ic);
        uint64_t lo = t & 0xFFFFFFFFu, hi = t >> 32;
        if (!e->mode64) {               /* 16/32-bit code: the upper halves stay */
            lo |= rd(uc, st, S_RAX) & ~0xFFFFFFFFull;
            hi |= rd(uc, st, S_RDX) & ~0xFFFFFFFFull;
        }
        ids[nw] = (int)st->reg_ids[S_RAX]; vals[nw++] = lo;
        ids[nw] = (int)st->reg_ids[S_RDX]; vals[nw++] = hi;
        break;
    }
    case K_OUT_IMM: case K_IN_IMM: case K_OUT_DX: case K_IN_DX: {
        uint64_t port = (e->kind == K_OUT_IMM || e->kind == K_IN_IMM)
                        ? e->port : (rd(uc, st, S_RDX) & 0xFFFF);
        if (e->bits && e->bits != st->bits)
            return 0;                   /* decoded for another code size: Python decodes again */
        if (lean_on(st, R_IO) && !e->bits && io_intercepted_n(st, port, e->size))
            return lean_exit(uc, st, address, R_IO, ic);  /* (sized forms: the Python trap) */
        fx_latch *l = e->size == 1 ? latch_find(st, port) : 0;
        if (!l) {
            if (!io_direct(uc, st, e, port, e->kind == K_IN_IMM || e->kind == K_IN_DX, ic,
                           &ids[0], &vals[0]))
                return 0;
            nw = (e->kind == K_IN_IMM || e->kind == K_IN_DX) ? 1 : 0;
            break;
        }
        if (io_intercepted(st, port)) {
            if (py_only(st, R_IO))
                return 0;
            reason = R_IO;
            t0 = now_ns();
            st->exit_count++;
        }
        uint64_t rax = rd(uc, st, S_RAX);
        if (e->kind == K_OUT_IMM || e->kind == K_OUT_DX) {
            l->value = (rax & 0xFF) & l->wmask;
        } else {
            uint64_t v = l->read_cell ? (l->value & 0xFF) : 0xFF;
            ids[nw] = (int)st->reg_ids[S_RAX];
            vals[nw++] = (rax & ~0xFFull) | v;
        }
        break;
    }
    default:
        return 0;
    }
    if (nw) {
        void *ptrs[4];
        for (int i = 0; i < nw; i++)
            ptrs[i] = &vals[i];
        st->write_batch(uc, ids, ptrs, nw);
    }
    if (reason) {
        st->stats[reason]++;
        st->stats_ns[reason] += now_ns() - t0;
        /* the exit moved virtual time by exit_cost ticks: the next device timer (the block
         * counter's soft deadline, in retired instructions) comes that much sooner; once it
         * is reached the counter stops the engine at the next block, where nrip starts one */
        uint64_t soft = ctr[W_SOFT];
        if (soft != NO_DEADLINE) {
            uint64_t d = st->exit_cost / st->tsc_per_insn;
            ctr[W_SOFT] = soft > d ? soft - d : 0;
        }
    }
    /* the instruction retired; the rest of the block is counted when it restarts at nrip */
    ctr[W_COUNTER] = ic + 1;
    ctr[W_LAST_ADDR] = ctr[W_LAST_SIZE] = ctr[W_LAST_N] = 0;
    st->reg_write(uc, (int)st->reg_ids[S_RIP], &nrip);
    st->fast++;
    return 1;
}

/* Monitor trap flag with the default handler: an MTF exit after every instruction, i.e.
 * at every instruction boundary but the first of an emu_start (the Python side does the
 * one after the last instruction that retired, and the first exit of the reason). */
static inline void mtf_boundary(fx_state *st)
{
    if (st->mtf_started) {
        st->exit_count++;
        st->stats[R_MTF]++;
        st->mtf_done++;
    } else {
        st->mtf_started = 1;
    }
}

/* UC_HOOK_CODE over all code while MTF stepping runs here (user data: the state).  Unicorn
 * calls it after the trap hook of the same address, which has done the boundary then. */
void fx_step(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
{
    fx_state *st = (fx_state *)user_data;
    (void)uc; (void)size;
    if (!st->mtf_on)
        return;
    if (st->mtf_skip == address) {
        st->mtf_skip = ~0ull;
        return;
    }
    mtf_boundary(st);
}

void fx_trap(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
{
    fx_entry *e = (fx_entry *)user_data;
    fx_state *st = e->st;
    if (st->mtf_on) {
        mtf_boundary(st);
        st->mtf_skip = address;
    }
    if (e->kind && (st->flags & FX_FAST) && fast(uc, address, e, st))
        return;
    /* the Python path: registers in one batch before, queued writes in one batch after */
    fx_read_snap(uc, st);
    st->nwrite = 0;
    st->pc_write = 0;
    st->slow++;
    st->py_trap(uc, address, size, e);
    flush_queued(uc, st);
}

/* ---- interrupt and exception delivery through the guest IDT (cpu/delivery.py) -------------
 *
 * fx_deliver does in one call what cpu.delivery.deliver_event does for the common case: a
 * protected-mode or long-mode IDT gate (32-bit or 64-bit interrupt or trap gate, no IST) to
 * a code segment at the current privilege level whose descriptor is the code segment
 * already loaded, so only RSP, RFLAGS and RIP change and the frame goes to the current
 * stack.  The CPU state is read from one context copy (the vCPU's, at the offsets
 * cpu/state.py found), guest memory through the engine's MMU at CPL 0 (or unpaged).
 * Anything else -- real mode, a stack switch, an IST, a CS load, a fault while delivering,
 * a frame across a page -- returns 0 with nothing changed, and the Python path does it.
 */
typedef int (*ctx_save_t)(uc_engine *, void *);
typedef int (*mem_rw_t)(uc_engine *, uint64_t, void *, uint64_t);
typedef int (*translate_t)(uc_engine *, uint64_t, int, uint64_t *);

#define FXD_VERSION 1

typedef struct fx_dlv {
    uint64_t version;
    uc_engine *uc;
    void *ctx;                 /* the vCPU's uc_context (cpu/state.py CpuState._ctx) */
    uint8_t *env;              /* CPUX86State inside it */
    ctx_save_t ctx_save;       /* uc_context_save: refresh the copy */
    reg_read_t reg_read;
    reg_write_t reg_write;
    write_batch_t write_batch;
    mem_rw_t mem_read;
    mem_rw_t mem_write;
    translate_t translate;
    uint64_t rsp_id, rflags_id, rip_id;
    uint64_t mem_size;         /* guest RAM: frames only go there */
    /* out */
    uint64_t frame_phys, frame_len, new_rip, new_rsp, new_rflags;
    uint64_t delivered;        /* count of deliveries done here */
} fx_dlv;

int fx_dlv_size(void) { return (int)sizeof(fx_dlv) | (FXD_VERSION << 16); }

/* CPUX86State layout (cpu/state.py) */
enum { E_EFLAGS = 136, E_HFLAGS = 176, E_SEGS = 184, E_SEG = 24, E_CR = 184 + 10 * 24 };
enum { SEG_CS = 1, SEG_SS = 2, SEG_LDT = 6, SEG_GDT = 8, SEG_IDT = 9 };
#define HFL_CPL 3u
#define HFL_PE (1u << 7)
#define HFL_LMA (1u << 14)
#define DSC_CS (1u << 11)
#define DSC_S (1u << 12)
#define DSC_P (1u << 15)
#define DSC_L (1u << 21)
#define DSC_B (1u << 22)
#define DSC_G (1u << 23)
#define FL_TF (1ull << 8)
#define FL_IF (1ull << 9)
#define FL_NT (1ull << 14)
#define FL_RF (1ull << 16)
#define FL_VM (1ull << 17)

typedef struct { uint32_t sel; uint64_t base; uint32_t limit, flags; } dseg;

static inline uint64_t env64(const fx_dlv *d, uint64_t off)
{
    uint64_t v;
    memcpy(&v, d->env + off, 8);
    return v;
}

static inline dseg env_seg(const fx_dlv *d, int i)
{
    const uint8_t *p = d->env + E_SEGS + (uint64_t)i * E_SEG;
    dseg s;
    memcpy(&s.sel, p, 4);
    memcpy(&s.base, p + 8, 8);
    memcpy(&s.limit, p + 16, 4);
    memcpy(&s.flags, p + 20, 4);
    return s;
}

/* guest-linear to physical for a supervisor access that stays inside one page; 0 = cannot */
static int lin_phys(const fx_dlv *d, int paging, int long_mode, uint64_t lin, uint64_t n,
                    int write, uint64_t *pa)
{
    if ((lin & 0xFFF) + n > 0x1000)
        return 0;
    if (!paging) {
        *pa = long_mode ? lin : (lin & 0xFFFFFFFFu);
    } else if (d->translate(d->uc, lin, write ? 2 : 1, pa)) {
        return 0;
    }
    return *pa + n <= d->mem_size;
}

#define FXD_SOFT 1u               /* INT n / INT3 / INTO: the gate's DPL is checked */
#define FXD_EC 2u                 /* push `error_code` */
#define FXD_FAULT 8u              /* a fault-class exception: RF is set in the RFLAGS image
                                   * pushed (clear for every other event) */
#define FXD_HERE 4u               /* an external interrupt at the block boundary the engine
                                   * is at (counter.py soft deadline): it returns to the RIP
                                   * register, and only if RFLAGS.IF = 1 and no STI / MOV SS
                                   * blocking is in effect (hflags) */
#define HFL_INHIBIT_IRQ (1u << 3)

int fx_deliver(fx_dlv *d, uint64_t vector, uint64_t how, uint64_t error_code, uint64_t ret_lin)
{
    uc_engine *uc = d->uc;
    if (d->ctx_save(uc, d->ctx))
        return 0;
    uint32_t hf;
    memcpy(&hf, d->env + E_HFLAGS, 4);
    uint64_t eflags = env64(d, E_EFLAGS);
    if (!(hf & HFL_PE) || (eflags & FL_VM))
        return 0;
    if ((how & FXD_HERE) && (hf & HFL_INHIBIT_IRQ))
        return 0;
    unsigned cpl = hf & HFL_CPL;
    uint64_t cr0 = env64(d, E_CR), cr4 = env64(d, E_CR + 32);
    int paging = (cr0 >> 31) & 1;
    if (paging && (cpl != 0 || (cr4 & (1ull << 21))))
        return 0;                       /* the engine's MMU would check at this CPL */
    int long_mode = (hf & HFL_LMA) != 0;
    dseg idt = env_seg(d, SEG_IDT), cs = env_seg(d, SEG_CS), ss = env_seg(d, SEG_SS);
    uint64_t vec = vector & 0xFF, gsz = long_mode ? 16 : 8, pa;
    if (vec * gsz + gsz - 1 > idt.limit)
        return 0;
    uint32_t gate[4];
    if (!lin_phys(d, paging, long_mode, idt.base + vec * gsz, gsz, 0, &pa)
            || d->mem_read(uc, pa, gate, gsz))
        return 0;
    uint32_t e1 = gate[0], e2 = gate[1], gtype = (e2 >> 8) & 0x1F;
    if (gtype != 0x0E && gtype != 0x0F)
        return 0;                       /* 16-bit and task gates, bad types: Python */
    if ((how & FXD_SOFT) && ((e2 >> 13) & 3) < cpl)
        return 0;
    if (!(e2 & DSC_P) || (long_mode && (e2 & 7)))
        return 0;                       /* not present (#NP) or an IST stack: Python */
    uint32_t sel = (e1 >> 16) & 0xFFFF;
    uint64_t offset = (e1 & 0xFFFF) | (e2 & 0xFFFF0000u);
    if (long_mode)
        offset |= (uint64_t)gate[2] << 32;
    dseg tbl = env_seg(d, (sel & 4) ? SEG_LDT : SEG_GDT);
    uint32_t idx = sel & ~7u, c[2];
    if ((sel & ~3u) == 0 || idx + 7 > tbl.limit)
        return 0;
    if (!lin_phys(d, paging, long_mode, tbl.base + idx, 8, 0, &pa) || d->mem_read(uc, pa, c, 8))
        return 0;
    unsigned cdpl = (c[1] >> 13) & 3;
    if (!(c[1] & DSC_S) || !(c[1] & DSC_CS) || !(c[1] & DSC_P) || cdpl > cpl)
        return 0;
    if (long_mode && (!(c[1] & DSC_L) || (c[1] & DSC_B)))
        return 0;
    unsigned new_cpl = (c[1] & (1u << 10)) ? cpl : cdpl;
    if (new_cpl != cpl)
        return 0;                       /* a stack switch: Python */
    /* the code segment the gate names must be the one loaded: then nothing but RSP,
     * RFLAGS and RIP changes (cpu/state.py descriptor_cache) */
    uint64_t cbase = (c[0] >> 16) | ((uint64_t)(c[1] & 0xFF) << 16) | (c[1] & 0xFF000000u);
    uint32_t climit = (c[0] & 0xFFFF) | (c[1] & 0x000F0000u);
    if (c[1] & DSC_G)
        climit = (climit << 12) | 0xFFF;
    if (cs.sel != ((sel & ~3u) | new_cpl) || cs.base != cbase || cs.limit != climit
            || cs.flags != c[1])
        return 0;
    uint64_t rflags = 0;
    d->reg_read(uc, (int)d->rflags_id, &rflags);
    if (how & FXD_HERE) {
        if (!(rflags & FL_IF))
            return 0;
        d->reg_read(uc, (int)d->rip_id, &ret_lin);
        ret_lin += cs.base;
    }
    uint64_t old_rsp = env64(d, 4 * 8);
    uint64_t ret = ret_lin - cs.base;
    /* RF in the image: set for a fault; clear otherwise (the engine leaves RF set until the
     * end of the block after an IRET that restored it, where hardware clears it after one
     * instruction) */
    uint64_t pushed = (how & FXD_FAULT) ? rflags | FL_RF : rflags & ~FL_RF;
    uint64_t frame[6];
    int n = 0;
    uint64_t new_sp, lin;
    uint64_t buf[6];
    if (long_mode) {
        frame[n++] = ret;
        frame[n++] = cs.sel;
        frame[n++] = pushed;
        frame[n++] = old_rsp;
        frame[n++] = ss.sel;
        uint64_t sp = (old_rsp & ~0xFull) - 8 * (uint64_t)n - ((how & FXD_EC) ? 8 : 0);
        uint64_t *w = buf;
        int k = 0;
        if ((how & FXD_EC))
            w[k++] = error_code;
        for (int i = 0; i < n; i++)
            w[k++] = frame[i];
        d->frame_len = 8 * (uint64_t)k;
        lin = sp;
        new_sp = sp;
    } else {
        uint64_t mask = (ss.flags & DSC_B) ? 0xFFFFFFFFull : 0xFFFFull;
        uint32_t w[4];
        int k = 0;
        if ((how & FXD_EC))
            w[k++] = (uint32_t)error_code;
        w[k++] = (uint32_t)ret;
        w[k++] = cs.sel;
        w[k++] = (uint32_t)pushed;
        uint64_t sp = (old_rsp - 4 * (uint64_t)k) & mask;
        memcpy(buf, w, 4 * (size_t)k);
        d->frame_len = 4 * (uint64_t)k;
        lin = (ss.base + sp) & 0xFFFFFFFFull;
        new_sp = (old_rsp & ~mask) | sp;
        offset &= 0xFFFFFFFFull;
    }
    if (!lin_phys(d, paging, long_mode, lin, d->frame_len, 1, &pa)
            || d->mem_write(uc, pa, buf, d->frame_len))
        return 0;
    uint64_t nfl = (rflags & ~(FL_TF | FL_NT | FL_RF | FL_VM | ((gtype & 1) ? 0 : FL_IF))) | 2;
    int ids[2] = {(int)d->rsp_id, (int)d->rflags_id};
    uint64_t vals[2] = {new_sp, nfl};
    void *ptrs[2] = {&vals[0], &vals[1]};
    d->write_batch(uc, ids, ptrs, 2);
    d->reg_write(uc, (int)d->rip_id, &offset);
    d->frame_phys = pa;
    d->new_rip = offset;
    d->new_rsp = new_sp;
    d->new_rflags = nfl;
    d->delivered++;
    return 1;
}

/* ---- a device timer's interrupt at the block counter's soft deadline (vcpu/events.py) ------
 *
 * counter.py's stub tail-calls fx_soft_deadline (its soft-deadline function) at the start of
 * the first block at or after the soft deadline, with the counter's state words as user data;
 * word W_SOFT_CTX points at the fx_soft below.  One turn: the VMM's TSC at this boundary, then
 * the vCPU's `tick(icount, tsc)` -- the devices act on the time and say which interrupt the
 * CPU would take (a vector), or that the run loop must look (TICK_STOP: the engine stops
 * before this block, as the stub does without a soft-deadline function), or that it did
 * everything itself (TICK_DONE) --, the delivery through the guest IDT (fx_deliver, the
 * common case; anything else stops the engine and the run loop delivers: nothing was
 * acknowledged yet), and `acked(vector, frame_phys, icount, tsc)` -- the interrupt controller
 * acknowledges it, and the answer is the next soft deadline.  Two calls of Python through the
 * C API and no ctypes crossing: only built with the Python headers (fx_soft_size says).  A
 * vector from tick may carry REFLECTED (0x100: external-interrupt exiting's handler reflected
 * it); acked gets it back as it came.
 */
enum { W_EMU_STOP = 9, W_STOPPED = 11 };
#define TICK_STOP (-1)
#define TICK_DONE (-2)
typedef int (*emu_stop_t)(uc_engine *);

#ifdef FX_CAPI
int fx_soft_size(void) { return (int)sizeof(struct fx_soft) | (FXS_VERSION << 16); }

/* ---- the master 8259's non-specific EOI (OUT 0x20, 0x20) that changes nothing else ----------
 *
 * What the direct device path (vcpu/deviceio.py _dio_io -> pic.PicPair.io_write -> OCW2 ->
 * events._device_change_needs_stop) does for this write when it ends with nothing to do --
 * the in-service bit of the highest priority cleared, the instruction counted, the engine
 * going on -- done on the Python objects through the C API, without running Python code.
 * Only when that is the whole outcome: the VMM has nothing waiting (no event, NMI or live
 * request, no device deadline it has not looked at; an interrupt-state change it has not
 * looked at is looked at here, as the Python path does after the write), the local APIC
 * has no request, the 8259 none left after the EOI (so no interrupt is pending), and a device
 * deadline, if any, is one the run loop already watches MOV SS / POP SS for.  Anything else,
 * or an attribute that is not what it should be: 0, nothing changed, and the Python path does
 * the write.  The objects are the home of the state (pic.py, board.py, clock.py, lapic.py,
 * the vCPU's events.py): change the two together. */
static PyObject *N_event, *N_nmi_pending, *N_live_nmi, *N_live_irqs, *N_changed, *N_rescheduled,
    *N_stale, *N_next, *N_irr, *N_isr, *N_imr, *N_priority_add, *N_extra_trap, *N_icount,
    *N_ss_load, *N_pend, *N_pending_cfg, *N_rehalt, *N_virq, *N_nmi_reflect, *N_in_hook,
    *N_input_wake, *N_events_delivered, *N_irqs_in_engine, *N_rcache, *N_data_frame, *N_first,
    *N_armed, *N_hz, *N_deadline, *N_order, *N_lines, *N_config, *N_redir, *N_levels, *N_elcr,
    *N_last_level, *N_special_mask, *N_sfnm, *N_auto_eoi, *N_base, *N_mode, *N_loaded,
    *N_paused_at, *N_gate, *N_count, *N_lvt, *N_input, *N_frame_check, *N_entry_inject,
    *N_exit_stats, *N_lean_extints, *N_ptimer_fire;

static int eoi_names(void)
{
    if (N_ptimer_fire)
        return 1;
    static const char *const names[] = {"_event", "_nmi_pending", "_live_nmi", "_live_irqs",
        "_changed", "rescheduled", "_stale", "_next", "irr", "isr", "imr", "priority_add",
        "_extra_trap", "icount", "ss_load", "_pend", "_pending_cfg", "_rehalt", "_virq",
        "_nmi_reflect", "_in_hook", "_input_wake", "events_delivered", "irqs_in_engine",
        "_rcache", "_data_frame", "_first", "armed", "hz", "deadline", "order", "_lines",
        "config", "redir", "levels", "elcr", "last_level", "special_mask",
        "special_fully_nested", "auto_eoi", "base", "mode", "loaded", "paused_at", "gate",
        "count", "lvt", "_input", "_frame_check", "_entry_inject", "exit_stats", "lean_extints",
        "_ptimer_fire"};
    PyObject **slots[] = {&N_event, &N_nmi_pending, &N_live_nmi, &N_live_irqs, &N_changed,
        &N_rescheduled, &N_stale, &N_next, &N_irr, &N_isr, &N_imr, &N_priority_add,
        &N_extra_trap, &N_icount, &N_ss_load, &N_pend, &N_pending_cfg, &N_rehalt, &N_virq,
        &N_nmi_reflect, &N_in_hook, &N_input_wake, &N_events_delivered, &N_irqs_in_engine,
        &N_rcache, &N_data_frame, &N_first, &N_armed, &N_hz, &N_deadline, &N_order, &N_lines,
        &N_config, &N_redir, &N_levels, &N_elcr, &N_last_level, &N_special_mask, &N_sfnm,
        &N_auto_eoi, &N_base, &N_mode, &N_loaded, &N_paused_at, &N_gate, &N_count, &N_lvt,
        &N_input, &N_frame_check, &N_entry_inject, &N_exit_stats, &N_lean_extints,
        &N_ptimer_fire};
    _Static_assert(sizeof names / sizeof names[0] == sizeof slots / sizeof slots[0], "names");
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*slots[i] = PyUnicode_InternFromString(names[i])))
            return 0;
    return 1;
}

/* target.name = value; `dict`: target is an instance dict (fx_soft's *_d) */
static int put_u64(PyObject *target, PyObject *name, uint64_t value, int dict)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (!v)
        return -1;
    int r = dict ? PyDict_SetItem(target, name, v) : PyObject_SetAttr(target, name, v);
    Py_DECREF(v);
    return r;
}

/* An object's plain attributes through its instance dict (fx_soft's *_d): a missing one is
 * NULL / -1, as a failed attribute read is. */
static inline PyObject *dnew(void *d, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError((PyObject *)d, name);
    Py_XINCREF(v);
    return v;
}

static int d_true(void *d, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError((PyObject *)d, name);
    return v ? PyObject_IsTrue(v) : -1;
}

static int d_none(void *d, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError((PyObject *)d, name);
    return v ? v == Py_None : -1;
}

static int long_u64(PyObject *v, uint64_t *out);

static int d_u64(void *d, PyObject *name, uint64_t *out)
{
    return long_u64(PyDict_GetItemWithError((PyObject *)d, name), out);
}

static int64_t d_int(void *d, PyObject *name)
{
    uint64_t v;
    return d_u64(d, name, &v) || v > INT64_MAX ? -1 : (int64_t)v;
}

static int d_set(void *d, PyObject *name, PyObject *v)
{
    return PyDict_SetItem((PyObject *)d, name, v);
}

static int d_set_u64(void *d, PyObject *name, uint64_t x)
{
    return put_u64((PyObject *)d, name, x, 1);
}

static int d_add(void *d, PyObject *name, uint64_t n)
{
    uint64_t v;
    return d_u64(d, name, &v) ? -1 : d_set_u64(d, name, v + n);
}

static int pic_eoi(struct fx_soft *s, uint64_t ic)
{
    int done = 0;
    PyGILState_STATE g = PyGILState_Ensure();
    if (!s->vcpu_d || !eoi_names())
        goto out;
    PyObject *ev = dnew(s->vcpu_d, N_event);
    int quiet = ev == Py_None;
    Py_XDECREF(ev);
    if (!quiet || d_true(s->vcpu_d, N_nmi_pending) || d_true(s->vcpu_d, N_live_nmi)
            || d_true(s->vcpu_d, N_live_irqs) || d_true(s->clock_d, N_rescheduled)
            || d_true(s->clock_d, N_stale) || d_true(s->lapic_d, N_irr))
        goto out;                       /* (-1, missing, is true too: the Python path) */
    int64_t isr = d_int(s->master_d, N_isr), irr = d_int(s->master_d, N_irr),
            imr = d_int(s->master_d, N_imr), pa = d_int(s->master_d, N_priority_add);
    if (isr < 0 || irr < 0 || imr < 0 || pa < 0 || (irr & ~imr & 0xFF))
        goto out;
    PyObject *nf = dnew(s->clock_d, N_next);
    if (!nf)
        goto out;
    int watched = 1;
    if (nf != Py_None) {                /* a deadline: the run loop must watch MOV SS / POP SS */
        PyObject *extra = dnew(s->vcpu_d, N_extra_trap);
        watched = extra ? PySequence_Contains(extra, N_ss_load) == 1 : 0;
        Py_XDECREF(extra);
    }
    Py_DECREF(nf);
    if (!watched)
        goto out;
    /* OCW2 non-specific EOI: the in-service line of the highest priority (line `pa` first) */
    for (int p = 0; p < 8; p++) {
        int line = (p + (int)pa) & 7;
        if (isr & (1 << line)) {
            isr &= ~(1 << line);
            break;
        }
    }
    /* the Python path ends with the board's interrupt state looked at (its changed flag
     * clear: _device_change_needs_stop), whether it was set before or by this write */
    if (d_set_u64(s->vcpu_d, N_icount, ic + 1) || d_set(s->board_d, N_changed, Py_False)
            || d_set_u64(s->master_d, N_isr, (uint64_t)isr))
        goto out;                       /* (the EOI last: when it fails, the Python path does
                                         * the whole write, and writes the rest again) */
    s->eoi_done++;
    done = 1;
out:
    if (PyErr_Occurred())
        PyErr_Clear();                  /* (an attribute that is not there: the Python path) */
    PyGILState_Release(g);
    return done;
}

/* ---- the whole turn for the plain PIT -> 8259 -> CPU interrupt (c_turn) -----------------------
 *
 * What the Python turn (events._soft_tick: Board.advance -> Clock.advance -> Pit._fire ->
 * Board._pit_pulse, Pit re-arm, Board.pending_interrupt; the delivery; events._soft_acked:
 * Board.ack_interrupt, _after_boundary_delivery) does when its outcome is the plain one, done
 * on the same objects through the C API: the PIT's timer is the only one due, channel 0
 * counts periodically (modes 2 and 3), its IRQ 0 edge reaches only the 8259 (not rerouted to
 * the HPET, the IOAPIC pin masked), the local APIC has no request and passes ExtINT, the
 * master 8259 presents a line other than the cascade (not in auto-EOI mode), the CPU takes
 * it through a plain gate (fx_deliver).  Every condition is read before anything changes;
 * any other case -- or an attribute that is not what it should be -- returns 0 with nothing
 * changed, and the Python turn runs.  The objects are the home of the state: change the two
 * together (tests/test_irq_delivery.py runs guests both ways). */
static int long_u64(PyObject *v, uint64_t *out)
{
    if (!v || !PyLong_Check(v))
        return -1;
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

static int get_u64(PyObject *o, PyObject *name, uint64_t *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    int r = long_u64(v, out);
    Py_XDECREF(v);
    return r;
}

static unsigned prio(unsigned r, unsigned m)
{
    for (unsigned p = 0; p < 8; p++)
        if (m & (1u << ((p + r) & 7)))
            return p;
    return 8;
}

/* I8259.output(): the line a chip presents, or -1 */
static int pic_output(uint64_t irr, uint64_t imr, uint64_t isr, unsigned r, int special_mask,
                      int sfnm)
{
    unsigned req = (unsigned)(irr & ~imr) & 0xFF;
    if (!req)
        return -1;
    unsigned p = prio(r, req), in_service = (unsigned)isr & 0xFF;
    if (in_service) {
        if (special_mask)
            in_service &= ~(unsigned)imr;
        if (sfnm)
            in_service &= ~(1u << 2);
        if (p >= prio(r, in_service))
            return -1;
    }
    return (int)((p + r) & 7);
}

static int c_turn(struct fx_soft *s, uint64_t *ctr, uint64_t ic, uint64_t tsc)
{
    PyObject *vcpu = (PyObject *)s->vcpu_obj, *timer = (PyObject *)s->pit_timer_obj;
    if (!s->turn_on || !timer || !s->vcpu_d || !eoi_names())
        return 0;
    int exiting = s->turn_exit != 0;
    const fx_state *fst = s->st;
    /* with external-interrupt exiting, the devices act again after the exit's virtual time */
    uint64_t after = exiting ? tsc + fst->exit_cost : tsc;
    uint64_t t0 = exiting ? now_ns() : 0;
    if (s->wall_deadline_ns && now_ns() >= s->wall_deadline_ns)
        return 0;
    /* the vCPU has nothing waiting (events._soft_tick) */
    if (d_true(s->vcpu_d, N_in_hook) || d_none(s->vcpu_d, N_event) != 1 || d_true(s->vcpu_d, N_pend)
            || d_none(s->vcpu_d, N_pending_cfg) != 1 || d_true(s->vcpu_d, N_rehalt)
            || d_true(s->vcpu_d, N_virq) || d_true(s->vcpu_d, N_nmi_pending)
            || d_true(s->vcpu_d, N_nmi_reflect) || d_true(s->vcpu_d, N_live_nmi)
            || d_true(s->vcpu_d, N_live_irqs) || d_true(s->serial_d, N_input))
        return 0;
    if (exiting) {                      /* not the reason's first exit; nothing to inject */
        PyObject *st = dnew(s->vcpu_d, N_exit_stats), *key = PyLong_FromUnsignedLongLong(s->extint_reason);
        int seen = st && key && PyDict_Check(st) && PyDict_GetItem(st, key) != 0;
        Py_XDECREF(st);
        Py_XDECREF(key);
        if (!seen || d_none(s->vcpu_d, N_entry_inject) != 1)
            return 0;
    }
    /* the clock: the PIT's timer first and due, every other one later (Clock.advance) */
    if (d_true(s->clock_d, N_stale))
        return 0;
    PyObject *first = dnew(s->clock_d, N_first);
    Py_XDECREF(first);
    uint64_t due, pit_order, hz;
    if (first != timer || get_u64(timer, N_deadline, &due) || due > tsc
            || get_u64(timer, N_order, &pit_order) || d_u64(s->clock_d, N_hz, &hz) || !hz)
        return 0;
    PyObject *armed = dnew(s->clock_d, N_armed);
    if (!armed || !PyList_Check(armed)) {
        Py_XDECREF(armed);
        return 0;
    }
    PyObject *other_t = 0;
    uint64_t other = 0, other_order = 0;
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(armed); i++) {
        PyObject *t = PyList_GET_ITEM(armed, i);
        uint64_t d, o;
        if (t == timer)
            continue;
        if (get_u64(t, N_deadline, &d) || get_u64(t, N_order, &o)) {
            ok = 0;
        } else if (!other_t || d < other || (d == other && o < other_order)) {
            other_t = t;
            other = d;
            other_order = o;
        }
    }
    if (!ok || (other_t && other <= after))
        goto no;
    /* the PIT's channel 0 counting periodically: its next rising edge (Channel.next_rise) */
    uint64_t mode, loaded, count;
    if (d_none(s->ch0_d, N_paused_at) != 1 || d_u64(s->ch0_d, N_mode, &mode) || (mode & 3) < 2
            || mode > 7 || d_true(s->ch0_d, N_gate) != 1 || d_u64(s->ch0_d, N_loaded, &loaded)
            || d_u64(s->ch0_d, N_count, &count) || !count)
        goto no;
    unsigned __int128 d = (unsigned __int128)(tsc > loaded ? tsc - loaded : 0) * s->pit_hz / hz;
    unsigned __int128 k = (d / count + 1) * count;
    unsigned __int128 nt = loaded + (k * hz + s->pit_hz - 1) / s->pit_hz;
    if (nt > UINT64_MAX)
        goto no;
    uint64_t t = (uint64_t)nt;
    if (t <= after)                     /* due again within the exit's time: the Python turn */
        goto no;
    /* IRQ 0's edge reaches the 8259 only (Board._pit_pulse, IoApic.pulse, I8259.pulse) */
    uint64_t config, lines, levels, e;
    if (d_u64(s->hpet_d, N_config, &config) || (config & s->leg_rt_cnf)
            || d_u64(s->board_d, N_lines, &lines) || (lines & 1)
            || d_u64(s->ioapic_d, N_levels, &levels)
            || (levels >> s->pit_gsi) & 1)
        goto no;
    PyObject *redir = dnew(s->ioapic_d, N_redir);
    int masked = redir && PyList_Check(redir) && (Py_ssize_t)s->pit_gsi < PyList_GET_SIZE(redir)
                 && !long_u64(PyList_GET_ITEM(redir, s->pit_gsi), &e)
                 && (e & s->io_masked) && !(e & s->io_level);
    Py_XDECREF(redir);
    if (!masked)
        goto no;
    uint64_t irr, imr, isr, elcr, last, pa, mbase, sirr;
    int smm, sfnm, aeoi;
    if (d_u64(s->master_d, N_irr, &irr) || d_u64(s->master_d, N_imr, &imr)
            || d_u64(s->master_d, N_isr, &isr) || d_u64(s->master_d, N_elcr, &elcr)
            || d_u64(s->master_d, N_last_level, &last) || d_u64(s->master_d, N_priority_add, &pa)
            || d_u64(s->master_d, N_base, &mbase) || d_u64(s->slave_d, N_irr, &sirr) || sirr
            || (elcr & 1) || pa > 7 || (smm = d_true(s->master_d, N_special_mask)) < 0
            || (sfnm = d_true(s->master_d, N_sfnm)) < 0 || (aeoi = d_true(s->master_d, N_auto_eoi))
            || aeoi < 0)
        goto no;
    if (!(last & 1))
        irr |= 1;                       /* the rising edge is latched */
    last &= ~1ull;
    /* the local APIC: no request of its own, ExtINT passed through (LocalApic.accepts_extint) */
    uint64_t lirr, lbase;
    if (d_u64(s->lapic_d, N_irr, &lirr) || lirr || d_u64(s->lapic_d, N_base, &lbase))
        goto no;
    if (lbase & s->base_en) {
        PyObject *lvt = dnew(s->lapic_d, N_lvt), *key = PyLong_FromUnsignedLongLong(s->lvt_lint0);
        PyObject *v = lvt && key && PyDict_Check(lvt) ? PyDict_GetItem(lvt, key) : 0;
        uint64_t lint0 = 0;
        int pass = v && !long_u64(v, &lint0) && !(lint0 & s->lvt_masked) && ((lint0 >> 8) & 7) == 7;
        Py_XDECREF(lvt);
        Py_XDECREF(key);
        if (!pass)
            goto no;
    }
    int line = pic_output(irr, imr, isr, (unsigned)pa, smm, sfnm);
    if (line < 0 || line == 2)
        goto no;
    uint64_t m = 1ull << line;
    isr |= m;                           /* INTA (I8259.acknowledge, PicPair.ack_pending) */
    if (!(elcr & m))
        irr &= ~m;
    last &= ~4ull;
    if (exiting && pic_output(irr, imr, isr, (unsigned)pa, smm, sfnm) >= 0)
        goto no;                        /* another request after the exit's INTA: Python */
    /* the CPU takes it: the plain gate, RFLAGS.IF = 1, no blocking */
    if (!fx_deliver(s->dlv, (mbase + (uint64_t)line) & 0xFF, FXD_HERE, 0, 0))
        goto no;
    Py_DECREF(armed);
    /* ---- done: the objects as the Python turn leaves them ---- */
    int first_pit = !other_t || t < other || (t == other && pit_order < other_order);
    uint64_t next = first_pit ? t : other;
    put_u64(timer, N_deadline, t, 0);
    d_set_u64(s->clock_d, N_next, next);
    d_set(s->clock_d, N_first, first_pit ? timer : other_t);
    d_set(s->clock_d, N_stale, Py_False);
    d_set(s->clock_d, N_rescheduled, Py_False);
    d_set(s->board_d, N_changed, Py_True);
    d_set_u64(s->master_d, N_irr, irr);
    d_set_u64(s->master_d, N_isr, isr);
    d_set_u64(s->master_d, N_last_level, last);
    d_set_u64(s->vcpu_d, N_icount, ic);
    d_set(s->vcpu_d, N_input_wake, Py_False);
    d_add(s->vcpu_d, N_events_delivered, 1);
    d_add(s->vcpu_d, N_irqs_in_engine, 1);
    if (exiting) {                      /* the exit, counted as the native paths count theirs */
        struct fx_state *w = s->st;
        w->exit_count++;
        w->stats[s->extint_reason]++;
        w->stats_ns[s->extint_reason] += now_ns() - t0;
        d_add(s->vcpu_d, N_lean_extints, 1);
        d_set(s->vcpu_d, N_ptimer_fire, Py_None);
    }
    PyObject *rc = dnew(s->vcpu_d, N_rcache);
    if (rc && PyDict_Check(rc) && PyDict_GET_SIZE(rc))
        PyDict_Clear(rc);
    Py_XDECREF(rc);
    uint64_t page = s->dlv->frame_phys & ~0xFFFull, known;
    if (d_u64(s->vcpu_d, N_data_frame, &known) || known != page) {
        PyErr_Clear();                  /* (None: no page known yet) */
        PyObject *a = PyLong_FromUnsignedLongLong(page);
        PyObject *r = a ? PyObject_CallMethodOneArg(vcpu, N_frame_check, a) : 0;
        Py_XDECREF(a);                  /* (the frame may land on code: its unit becomes data) */
        Py_XDECREF(r);
    }
    /* the next soft deadline (events._after_boundary_delivery, the virtual clock) */
    uint64_t left = next - after;
    uint64_t soft = (int64_t)left <= (int64_t)s->st->tsc_per_insn ? ic + 1
                    : ic + (left + s->st->tsc_per_insn - 1) / s->st->tsc_per_insn;
    ctr[W_SOFT] = soft < NO_DEADLINE ? soft : NO_DEADLINE;
    s->turns++;
    s->taken++;
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(vcpu);    /* (a write that failed: a bug, reported) */
    return 1;
no:
    Py_DECREF(armed);
    if (PyErr_Occurred())
        PyErr_Clear();
    return 0;
}

void fx_soft_deadline(uc_engine *uc, uint64_t address, uint32_t size, void *user)
{
    uint64_t *ctr = (uint64_t *)user;
    struct fx_soft *s = (struct fx_soft *)ctr[W_SOFT_CTX];
    const fx_state *st = s->st;
    (void)address; (void)size;
    uint64_t ic = ctr[W_COUNTER];
    uint64_t tsc = ic * st->tsc_per_insn + st->exit_count * st->exit_cost + st->idle_ticks
                   + st->tsc_adjust;
    PyGILState_STATE g = PyGILState_Ensure();
    if (c_turn(s, ctr, ic, tsc)) {
        PyGILState_Release(g);
        return;
    }
    uint64_t a[4] = {ic, tsc, 0, 0};
    int64_t v = call_ints((PyObject *)s->tick_obj, a, 2);
    if (v >= 0) {
        if (fx_deliver(s->dlv, (uint64_t)v & 0xFF, FXD_HERE, 0, 0)) {
            a[0] = (uint64_t)v;        /* (with its REFLECTED bit) */
            a[1] = s->dlv->frame_phys;
            a[2] = ic;
            a[3] = tsc;
            int64_t soft = call_ints((PyObject *)s->acked_obj, a, 4);
            ctr[W_SOFT] = soft < 0 ? NO_DEADLINE : (uint64_t)soft;
            s->taken++;
            v = TICK_DONE;
        } else {
            v = TICK_STOP;              /* not the plain case: the run loop delivers it */
        }
    }
    PyGILState_Release(g);
    if (v != TICK_DONE) {
        ctr[W_STOPPED] = 1;
        ((emu_stop_t)ctr[W_EMU_STOP])(uc);
    }
}
#endif
