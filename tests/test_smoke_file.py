"""vmcfg smoke: the smoke-file format, matrix expansion, -k and expectations (no processes)."""

import textwrap

import pytest

from vmcfg.smoke.expect import check
from vmcfg.smoke.loader import load_smoke, scan_positions
from vmcfg.smoke.model import Bound, Expect, SmokeFileError, parse_bound
from vmcfg.smoke.select import SelectError, compile_k
from vmcfg.status import LAUNCH_STATUSES


@pytest.fixture
def smoke_file(tmp_path):
    """smoke_file(text) -> path of a smoke file next to two guest files and a profile."""
    (tmp_path / "g1.bin").write_bytes(b"\xf4")
    (tmp_path / "g2.bin").write_bytes(b"\xf4")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "lab.toml").write_text('[profile]\nextends = "baseline"\n')

    def _w(text: str, name: str = "smoke.toml") -> str:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return str(p)
    return _w


def load_err(path: str) -> str:
    with pytest.raises(SmokeFileError) as ei:
        load_smoke(path)
    return str(ei.value)


# ---- cases and matrices --------------------------------------------------------------

def test_case_defaults_paths_relative_to_the_smoke_file(smoke_file, tmp_path):
    p = smoke_file("""
        [[case]]
        profile = "sub/lab.toml"
        guest = "g1.bin"
        """)
    (c,) = load_smoke(p).cases
    assert c.id == "lab-x-g1"
    assert c.profile_path == str(tmp_path / "sub" / "lab.toml")
    assert c.guest_arg == str(tmp_path / "g1.bin")
    assert c.expect.status == ("halted",) and c.expect.exit_code is None
    assert c.timeout == 10 and c.where == f"{p}:1"
    assert c.launch_args() == [str(tmp_path / "sub" / "lab.toml"), "--guest",
                               str(tmp_path / "g1.bin"), "--timeout", "10"]


def test_builtin_profile_passed_by_name_and_options(smoke_file):
    p = smoke_file("""
        [smoke]
        name = "ci"
        grace = 2.5
        [defaults]
        mode = 32
        timeout = 3
        [[case]]
        id = "boot32"
        profile = "baseline"
        guest = "g1.bin"
        memory = "4M"
        max_instructions = 5000
        args = ["--cpu", "cvmm"]
        """)
    s = load_smoke(p)
    assert s.name == "ci" and s.grace == 2.5
    (c,) = s.cases
    assert c.id == "boot32"
    a = c.launch_args()
    assert a[0] == "baseline"
    assert a[3:] == ["--mode", "32", "--memory", "4M", "--max-instructions", "5000",
                     "--timeout", "3", "--cpu", "cvmm"]


def test_matrix_expansion_exclude_cells_and_layered_expectations(smoke_file):
    p = smoke_file("""
        [defaults]
        expect.console_not_contains = "PANIC"
        [[matrix]]
        profiles = ["baseline", "sub/lab.toml"]
        guests = ["g1.bin", "g2.bin"]
        exclude = [{ profile = "lab", guest = "g2" }]
        expect.exits = { CPUID = ">= 1", HLT = 1 }
        [[matrix.cell]]
        guest = "g2.bin"
        expect.exit_code = 3
        expect.exits = { HLT = 0 }
        [[matrix.cell]]
        profile = "lab"
        timeout = 1
        skip = "flaky on lab"
        """)
    cases = {c.id: c for c in load_smoke(p).cases}
    assert list(cases) == ["baseline-x-g1", "baseline-x-g2", "lab-x-g1"]
    b1, b2, l1 = cases.values()
    assert b1.expect.status == ("halted",) and b1.expect.exits == {10: Bound(1, None),
                                                                  12: Bound(1, 1)}
    assert b1.expect.console_not_contains == ("PANIC",)
    # the cell merges exits per reason and exit_code implies status debug-exit
    assert b2.expect.status == ("debug-exit",) and b2.expect.exit_code == 3
    assert b2.expect.exits == {10: Bound(1, None), 12: Bound(0, 0)}
    assert l1.timeout == 1 and l1.skip == "flaky on lab" and b1.skip is None
    assert all(c.where == f"{p}:3" for c in cases.values())


def test_matrix_id_template_and_profiles_only(smoke_file):
    p = smoke_file("""
        [[matrix]]
        id = "m32-{profile}-{guest}"
        profiles = ["baseline"]
        guests = ["g1.bin"]
        mode = 32
        [[matrix]]
        profiles = ["baseline", "sub/lab.toml"]
        """)
    assert [c.id for c in load_smoke(p).cases] == ["m32-baseline-g1", "baseline", "lab"]


def test_status_list_with_exit_code_checks_the_code_only_on_debug_exit(smoke_file):
    p = smoke_file("""
        [[case]]
        profile = "baseline"
        guest = "g1.bin"
        expect = { status = ["halted", "debug-exit"], exit_code = 0 }
        """)
    (c,) = load_smoke(p).cases
    e = c.expect
    assert check(e, {"status": "halted", "guest_exit_code": None}) == []
    assert check(e, {"status": "debug-exit", "guest_exit_code": 0}) == []
    (m,) = check(e, {"status": "debug-exit", "guest_exit_code": 5})
    assert str(m) == "exit code: expected 0, got 5"
    (m,) = check(e, {"status": "triple-fault", "message": "#DF during #GP"})
    assert str(m) == ('status: expected "halted" or "debug-exit", got triple-fault: '
                      '#DF during #GP')


# ---- errors name file:line:col --------------------------------------------------------

@pytest.mark.parametrize("text, where, msg", [
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nexpct = {}\n', "4:1",
     "unknown key 'expct' in [[case]] (did you mean 'expect'?)"),
    ('[[case]]\nprofile = "baseline"\n[[case]]\nprofile = "nosuch"\n', "4:1",
     "profile 'nosuch': no such file or built-in profile"),
    ('[[case]]\nprofile = "baseline"\nguest = "missing.bin"\n', "3:1",
     "guest 'missing.bin': no such file"),
    ('[[case]]\nprofile = "baseline"\nguest = "builtin:nosuch"\n', "3:1",
     "no bundled guest 'nosuch'"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\n[case.expect]\nstatus = "halt"\n',
     "5:1", f"unknown status 'halt' (one of: {', '.join(LAUNCH_STATUSES)}); "
            "did you mean 'halted'?"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nexpect.exits = { CPUIDD = 1 }\n',
     "4:1", "case[1].expect.exits: unknown exit reason 'CPUIDD' (did you mean 'CPUID'?)"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nexpect.exits = { HLT = "~3" }\n',
     "4:1", "case[1].expect.exits.HLT: expected a count like 3"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nexpect.instructions = "9..2"\n',
     "4:1", "empty range '9..2'"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\n[case.expect]\n'
     'status = "halted"\nexit_code = 1\n', "6:1",
     'case[1].expect.exit_code is the code of a debug exit, but status [\'halted\']'),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nmode = 48\n', "4:1",
     "case[1].mode must be 16, 32 or 64, got 48"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\ntimeout = 0\n', "4:1",
     "case[1].timeout must be a positive number of seconds"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nargs = ["--json"]\n', "4:1",
     "--json is set by vmcfg smoke itself"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\nargs = ["--mode=32"]\n', "4:1",
     "use the 'mode' key instead of --mode"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\n'
     'expect.console_matches = "(unclosed"\n', "4:1", "bad regular expression '(unclosed'"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin"\n'
     '[[case]]\nprofile = "baseline"\nguest = "g1.bin"\n', "4:3",
     "duplicate case id 'baseline-x-g1' (first defined at"),
    ('[[case]]\nid = "has space"\nprofile = "baseline"\n', "2:1",
     "case id 'has space' may only contain"),
    ('[[case]]\nguest = "g1.bin"\n', "1:3", "[[case]] needs a profile"),
    ('[case]\nprofile = "baseline"\n', "1:2", "write [[case]] (an array of tables), not [case]"),
    ('[[matrix]]\nprofiles = ["baseline"]\nguests = ["g1.bin"]\n'
     'exclude = [{ guest = "g3" }]\n', "4:1",
     "exclude entry { guest = 'g3' } matches no cell of this matrix"),
    ('[[matrix]]\nprofiles = ["baseline"]\nguests = ["g1.bin"]\n'
     '[[matrix.cell]]\nprofile = "lab"\n', "4:3",
     "[[matrix.cell]] { profile = 'lab' } matches no cell of this matrix"),
    ('[[matrix]]\nprofiles = ["baseline"]\nguests = ["g1.bin"]\n'
     '[[matrix.cell]]\nguest = "g1"\nexpect.bogus = 1\n', "6:1",
     "unknown key 'bogus' in matrix[1].cell[1].expect"),
    ('[[matrix]]\nprofiles = []\n', "2:1", "matrix[1].profiles must not be empty"),
    ('[[matrix]]\nprofiles = ["baseline", "baseline"]\n', "2:1", "'baseline' is listed twice"),
    ('[[matrix]]\nid = "{prof}"\nprofiles = ["baseline"]\n', "2:1", "bad id template"),
    ('[smoke]\nname = "x"\n', None, "no cases: add a [[case]] or a [[matrix]]"),
    ('[[case]]\nprofile = "baseline"\nguest = "g1.bin\n', "3:16", "invalid TOML"),
    ('[defaults]\nexpect.status = 3\n', "2:1", "defaults.expect.status must be a string or an "
                                               "array of strings"),
    ('[[case]]\nprofile = "baseline"\nmode = 32.0\n', "3:1", "case[1].mode must be 16, 32 or 64"),
    ('[[case]]\nprofile = "baseline"\nmemory = "lots"\n', "3:1",
     'case[1].memory: expected a size like 16M, 16MiB, 0x1000000 or 16777216'),
    ('[[matrix]]\nprofiles = ["baseline"]\nexclude = "x"\n', "3:1",
     "matrix[1].exclude must be an array of { profile = ..., guest = ... } tables"),
    ('[[matrix]]\nprofiles = ["baseline"]\n[matrix.cell]\nprofile = "baseline"\n', "3:2",
     "write [[matrix.cell]] (an array of tables), not [matrix.cell]"),
    ('[smoke]\ngrace = -1\n[[case]]\nprofile = "baseline"\n', "2:1",
     "smoke.grace must be a positive number of seconds, got -1"),
    ('[[cases]]\nprofile = "baseline"\n', "1:3",
     "unknown key 'cases' in a smoke file (did you mean 'case'?)"),
    ('[[case]]\nprofile = "baseline"\nskip = ""\n', "3:1",
     "case[1].skip must be a reason (a string) or true"),
])
def test_bad_smoke_files_name_file_line_col(smoke_file, text, where, msg):
    p = smoke_file(text)
    e = load_err(p)
    assert e.startswith(f"{p}:{where}: " if where else f"{p}: "), e
    assert msg in e, e


def test_missing_and_unreadable_smoke_file(tmp_path):
    assert load_err(str(tmp_path / "nope.toml")) == f"{tmp_path / 'nope.toml'}: no such file"
    assert load_err(str(tmp_path)) == f"{tmp_path}: not a regular file"


def test_positions_of_array_of_tables_elements():
    text = textwrap.dedent("""
        [[case]]
        profile = "a"
        [[case]]
          profile = "b"
        [case.expect]
        status = "halted"
        [[matrix]]
        profiles = ["x"]
        [[matrix.cell]]
        guest = "g"
        """)
    pos = scan_positions(text, "f")
    assert (pos[("case", 0, "profile")].line, pos[("case", 1, "profile")].line) == (3, 5)
    assert pos[("case", 1, "profile")].col == 3
    assert pos[("case", 1, "expect", "status")].line == 7
    assert pos[("matrix", 0, "cell", 0, "guest")].line == 11


# ---- counts and expectations ---------------------------------------------------------

@pytest.mark.parametrize("text, lo, hi", [
    (3, 3, 3), (">= 1", 1, None), ("<=5", None, 5), ("> 0", 1, None), ("< 4", None, 3),
    ("2..4", 2, 4), ("=7", 7, 7), ({"min": 1}, 1, None), ({"max": 0}, None, 0),
    ({"min": 1, "max": 2}, 1, 2), ("1_000", 1000, 1000),
])
def test_parse_bound(text, lo, hi):
    assert parse_bound(text) == Bound(lo, hi)


@pytest.mark.parametrize("bad", [True, -1, "<0", "x", "4..2", {"min": 3, "max": 1}, {},
                                 {"least": 1}, 1.5])
def test_parse_bound_rejects(bad):
    with pytest.raises(ValueError):
        parse_bound(bad)


RESULT = {"status": "halted", "guest_exit_code": None, "instructions": 1200, "tsc": 5000,
          "exits": [{"reason": 10, "name": "CPUID", "count": 3},
                    {"reason": 16, "name": "RDTSC", "count": 2}],
          "console": "boot ok\nvmcfg hypervisor detected\n", "wall_seconds": 0.1}


def test_expectations_that_hold():
    e = Expect(exits={10: Bound(3, 3), 16: Bound(1, None), 12: Bound(None, 0)},
               instructions=Bound(None, 2000), tsc=Bound(1, None),
               console_contains=("boot ok",), console_not_contains=("panic",),
               console_matches=(r"^vmcfg hypervisor \w+$",), no_other_exits=True)
    assert check(e, RESULT) == []


def test_every_kind_of_mismatch_says_expected_and_actual():
    e = Expect(status=("debug-exit",), exit_code=0, exits={10: Bound(1, 1)},
               no_other_exits=True, instructions=Bound(None, 1000),
               console_contains=("hello",), console_not_contains=("hypervisor",),
               console_matches=(r"^done$",))
    got = [str(m) for m in check(e, RESULT)]
    assert got == [
        'status: expected "debug-exit" (exit code 0), got halted',
        "exits.CPUID: expected 1, got 3",
        "other exits: expected only CPUID, got RDTSC x2",
        "instructions: expected <= 1000, got 1200",
        "console: expected to contain 'hello', got console 'boot ok\\nvmcfg hypervisor "
        "detected\\n'",
        "console: expected not to contain 'hypervisor', got it on console line 2",
        "console: expected to match /^done$/, got console 'boot ok\\nvmcfg hypervisor "
        "detected\\n'",
    ]


# ---- -k --------------------------------------------------------------------------------

IDS = ["baseline-x-cpuid", "baseline-x-hello", "timing-x-cpuid", "timing-x-rdtsc32"]


@pytest.mark.parametrize("expr, want", [
    ("cpuid", ["baseline-x-cpuid", "timing-x-cpuid"]),
    ("CPUID", ["baseline-x-cpuid", "timing-x-cpuid"]),
    ("baseline and not hello", ["baseline-x-cpuid"]),
    ("hello or rdtsc", ["baseline-x-hello", "timing-x-rdtsc32"]),
    ("not (baseline or 32)", ["timing-x-cpuid"]),
    ("timing and (cpuid or 32)", ["timing-x-cpuid", "timing-x-rdtsc32"]),
    ("not not hello", ["baseline-x-hello"]),
    ("baseline-x-hello", ["baseline-x-hello"]),
])
def test_k_expressions(expr, want):
    pred = compile_k(expr)
    assert [i for i in IDS if pred(i)] == want


@pytest.mark.parametrize("bad", ["", "and", "a and", "(a", "a)", "a b", "not", "a or or b"])
def test_k_errors(bad):
    with pytest.raises(SelectError):
        compile_k(bad)
