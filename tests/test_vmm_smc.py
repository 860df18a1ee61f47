"""Self-modifying code: a patched instruction's new meaning takes effect at once.

Code pages are protected by engine region (vcpu/codepages.py): a store from another region
turns the written region into data at once and its next fetch decodes its blocks again; a
region whose own code writes it is protected page by page.  Each test counts the exits a
user sees and the instructions retired, so a stale hook (an exit that should not happen),
a missing one (a trapped instruction that runs natively) or a stale block count fails it.
"""

from vmm_helpers import names, run

# a routine copied to 0x300000 (another 1 MiB region than the code at 0x100000)
PROLOGUE = ("mov rsp, 0x80000\n"
            "mov rdi, 0x300000\n"
            "mov dword [rdi], 0x00C39090\n")        # nop; nop; ret


def _asm(tmp_path, body: str) -> str:
    a = tmp_path / "smc.asm"
    a.write_text(PROLOGUE + body + "mov al, 7\nout 0xf4, al\n")
    return str(a)


def test_trapped_instruction_written_over_nops_exits_and_nops_over_it_stop(tmp_path):
    res, recs = run("baseline", _asm(tmp_path,
                    "call rdi\n"                     # natively: the routine is code now
                    "mov word [rdi], 0xA20F\n"       # cpuid over the two NOPs
                    "call rdi\n"                     # exits
                    "mov word [rdi], 0x9090\n"       # NOPs over the cpuid
                    "call rdi\n"))                   # does not exit
    assert res.guest_exit_code == 7
    assert names(recs) == ["CPUID"]
    assert recs[0]["rip"] == 0x300000
    # 3 + (call, nop, nop, ret) + (call, cpuid, ret) + (call, nop, nop, ret) + 2 stores + 2
    assert res.instructions == 3 + 4 + 3 + 4 + 2 + 2


def test_patches_to_many_pages_of_another_region_all_take_effect(tmp_path):
    # eight routines on eight pages, run once, then all patched to cpuid, then run again
    body = ("mov ecx, 8\n"
            "mov rsi, rdi\n"
            "copy: mov dword [rsi], 0x00C39090\n add rsi, 0x1000\n dec ecx\n jnz copy\n"
            "mov ecx, 8\n mov rsi, rdi\n"
            "run1: call rsi\n add rsi, 0x1000\n dec ecx\n jnz run1\n"
            "mov ecx, 8\n mov rsi, rdi\n"
            "patch: mov word [rsi], 0xA20F\n add rsi, 0x1000\n dec ecx\n jnz patch\n"
            "mov ecx, 8\n mov rsi, rdi\n"
            "run2: push rcx\n call rsi\n pop rcx\n add rsi, 0x1000\n dec ecx\n jnz run2\n")
    res, recs = run("baseline", _asm(tmp_path, body))
    assert res.guest_exit_code == 7
    assert names(recs) == ["CPUID"] * 8
    assert [r["rip"] for r in recs] == [0x300000 + 0x1000 * i for i in range(8)]
    # 3 + copy 2+8x4 + run 2+8x(call, nop, nop, ret, add, dec, jnz) + patch 2+8x4
    # + run 2+8x(push, call, cpuid, ret, pop, add, dec, jnz) + 2
    assert res.instructions == 3 + 34 + 58 + 34 + 66 + 2


def test_code_that_patches_its_own_region_keeps_exiting_exactly(tmp_path):
    # the routine lives on another page of the code's own region, toggled 40 times between
    # cpuid and NOPs and run after each patch: 20 exits, every one at the routine
    body = ("mov rdi, 0x104000\n"
            "mov dword [rdi], 0x00C39090\n"
            "mov r12d, 40\n"                  # (cpuid writes rbx and rcx)
            "again: test r12b, 1\n jnz nops\n"
            "mov word [rdi], 0xA20F\n jmp go\n"
            "nops: mov word [rdi], 0x9090\n"
            "go: call rdi\n dec r12d\n jnz again\n")
    res, recs = run("baseline", _asm(tmp_path, body))
    assert res.guest_exit_code == 7
    assert names(recs) == ["CPUID"] * 20
    assert {r["rip"] for r in recs} == {0x104000}
    # 3 + 3 + 40 x 9 (test, jnz, store [+ jmp], call, cpuid + ret | nop, nop, ret, dec, jnz) + 2
    assert res.instructions == 3 + 3 + 40 * 9 + 2


def test_block_decode_finds_every_kind_classify_knows():
    """The first run of a block hooks what decode.block_sensitive finds: it must find every
    instruction decode.classify gives a kind (a kind added to classify alone would run
    natively, unhooked)."""
    import iced_x86 as ix
    from vmcfg.vmm import decode as D
    code = bytes.fromhex(
        "0fa2" "0f31" "0f01f9" "0f32" "0f30" "ec" "ee" "e680" "6c" "6e" "f4" "9c" "9d" "fb"
        "cf" "0f20e0" "0f22e0" "0f21c0" "0f23c0" "8ed0" "0f01d1" "0f09" "0f01e0" "0f0d08"
        "0f01c8" "0f01c9" "0fc7f0" "0fc7f8" "0f33" "660f3882c0" "0f00c0" "0f0118" "0f06"
        "f390" "0f0138" "0f08" "0f0b")
    for bits in (16, 32, 64):
        want = [(i.ip, D.classify(i)) for i in ix.Decoder(bits, code, ip=0x1000)
                if D.classify(i) is not None]
        n, found = D.block_sensitive(code, 0x1000, bits)
        assert [(a, k) for a, k, _i in found] == want
        assert n == sum(1 for _ in ix.Decoder(bits, code, ip=0x1000))
        assert {k for _a, k in want} >= {"cpuid", "rdtsc", "io", "hlt", "popf", "sti", "iret"}
