"""Example exit handlers used by tests/data/vmm/handlers.toml."""


def fake_vendor(ctx):
    """Emulate CPUID like the default handler, then change the vendor string of leaf 0."""
    leaf = ctx.regs.eax
    ctx.emulate()
    if leaf == 0:
        ctx.regs.rbx = int.from_bytes(b"Fake", "little")
        ctx.regs.rdx = int.from_bytes(b"CPU!", "little")
        ctx.regs.rcx = int.from_bytes(b"!!!!", "little")


def count_then_stop_exiting(ctx):
    """Emulate RDTSC, then turn RDTSC exiting off: later RDTSCs run without exits."""
    ctx.emulate()
    ctx.set_control("primary.rdtsc_exiting", False)
