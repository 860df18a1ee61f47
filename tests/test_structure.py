"""Conventions seen from the outside: streams in a pipe, one JSON shape per concept
(schemas checked against real reports), JSON errors on usage errors, one status table,
one size grammar, the Python API, and the structure rules (one exit point, thin CLI)."""

import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest

from conftest import PATIENCE, ROOT, wait_until

ANSI = re.compile(r"\x1b\[")


def vmcfg(*args, env=None, input=None, timeout=PATIENCE):
    """Run vmcfg in a subprocess with pipes as stdout and stderr."""
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=e, input=input, timeout=timeout)


def check(report: str, doc) -> None:
    from vmcfg.report_schemas import schema
    jsonschema.validate(doc, schema(report))


# ---- streams ----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("show", "baseline"), ("diff", "baseline", "trap-all"),
                                  ("explain", "rdtsc_exiting"), ("profiles",),
                                  ("matrix", "baseline"), ("caps", "show", "penryn")])
def test_results_go_to_stdout_without_colour_or_wrapping_in_a_pipe(args):
    r = vmcfg(*args)
    assert r.stdout.strip(), f"{args}: nothing on stdout"
    assert not ANSI.search(r.stdout) and not ANSI.search(r.stderr)
    if args[0] == "show":
        # rich would wrap at 80 columns: the header line stays one line in a pipe
        head = r.stdout.splitlines()[0]
        assert "baseline" in head and "valid" in head


def test_columns_force_color_and_no_color():
    wide = vmcfg("matrix", "baseline").stdout
    assert max(len(ln) for ln in wide.splitlines()) > 40
    narrow = vmcfg("matrix", "baseline", env={"COLUMNS": "40"}).stdout
    assert max(len(ln) for ln in narrow.splitlines()) <= 40
    assert ANSI.search(vmcfg("show", "baseline", env={"FORCE_COLOR": "1"}).stdout)
    assert not ANSI.search(vmcfg("show", "baseline",
                                 env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout)


def test_errors_go_to_stderr_and_results_survive_redirection(tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        p = subprocess.run([sys.executable, "-m", "vmcfg.cli", "diff", "baseline", "trap-all"],
                           stdout=fh, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.returncode == 1 and "hlt_exiting" in out.read_text() and p.stderr == ""
    r = vmcfg("show", "no-such-profile")
    assert r.returncode == 2 and r.stdout == "" and "no-such-profile" in r.stderr


# ---- JSON: schemas against real reports, errors ------------------------------------------

def test_reports_match_their_schemas(cli, tmp_path, write_profile):
    def doc(*args, code=None):
        r = cli(*args, "--json")
        if code is not None:
            assert r.exit_code == code, r.stderr
        return json.loads(r.stdout)
    check("validate", doc("validate", "baseline", "trap-all"))
    check("show", doc("show", "io-sandbox"))
    for name in ("rdtsc_exiting", "H1", "16", "0x80000021", "io.intercept", "penryn",
                 "flexpriority", "tsc.offset"):
        check("explain", doc("explain", name))
    check("diff", doc("diff", "baseline", "trap-all"))
    check("matrix", doc("matrix", "baseline"))
    check("profiles", doc("profiles"))
    check("cpus", doc("cpus"))
    check("caps", doc("caps", "show", "skylake-server"))
    check("caps-import", doc("caps", "import", os.path.join(ROOT, "tests", "data", "vmxcap",
                                                            "skylake-x.txt")))
    check("guest-list", doc("guest", "list"))
    check("guest-build", doc("guest", "build", "builtin:cpuid", "-o", str(tmp_path / "c.bin")))
    trace = str(tmp_path / "t.jsonl")
    doc("launch", "trap-all", "--guest", "builtin:exits-all", "--trace", trace)
    summary = doc("trace", "summary", trace)
    check("trace-summary", summary)
    p = str(tmp_path / "p.toml")
    check("new", doc("new", "p", "--from", "baseline", "-o", p))
    check("set", doc("set", p, "primary.hlt_exiting=true"))
    check("export", doc("export", "baseline", "--format", "raw"))
    for guest, status in (("builtin:cpuid", "debug-exit"), ("builtin:triple", "triple-fault"),
                          ("builtin:hlt", "halted")):
        d = doc("launch", "baseline", "--guest", guest)
        check("launch", d)
        assert d["status"] == status
    d = doc("launch", "baseline", "--guest", "builtin:runaway", "--max-instructions", "1000")
    check("launch", d)
    wild = doc("launch", os.path.join(ROOT, "tests", "data", "vmm", "prot32.toml"),
               "--guest", "builtin:wild32", "--mode", "32")
    check("launch", wild)
    assert isinstance(wild["registers"], dict) and wild["registers"]["rax"] == 0x11111111


def test_live_reports_match_their_schemas(rundir, tmp_path):
    on = tmp_path / "on.toml"
    on.write_text('[profile]\nextends = "baseline"\n[primary]\nrdtsc_exiting = true\n')
    r = vmcfg("launch", "baseline", "--guest", "builtin:soak", "--name", "s1", "--detach",
              "--json")
    assert r.returncode == 0, r.stderr
    try:
        check("launch-detach", json.loads(r.stdout))
        ps = json.loads(vmcfg("ps", "--json").stdout)
        check("ps", ps)
        check("apply", json.loads(vmcfg("apply", str(on), "--to", "s1", "--json",
                                         "--dry-run").stdout))
        check("apply", json.loads(vmcfg("apply", str(on), "--to", "s1", "--json").stdout))

        def rdtsc():
            s = json.loads(vmcfg("stats", "s1", "--json").stdout)
            return s if any(e["name"] == "RDTSC" for e in s["exits"]) else None
        check("stats", wait_until(rdtsc, "RDTSC exits after the apply"))
        check("history", json.loads(vmcfg("history", "s1", "--json").stdout))
        # --rollback beyond the history: a clear refusal, no negative entry number
        r = vmcfg("apply", "--rollback", "99", "--to", "s1", "--json")
        assert r.returncode == 1 and "#-" not in r.stdout + r.stderr
        check("error", json.loads(r.stdout))
        assert "cannot roll back 99" in r.stderr
        check("inject", json.loads(vmcfg("inject", "s1", "irq", "40", "--json").stdout))
    finally:
        r = vmcfg("stop", "s1", "--json")
    assert r.returncode == 0, r.stderr
    check("stop", json.loads(r.stdout))


@pytest.mark.parametrize("args,code", [
    (("validate",), 2),                                   # missing argument
    (("launch", "baseline", "--mode", "99"), 2),          # bad choice
    (("show", "baseline", "--frobnicate"), 2),            # unknown option
    (("nosuchcommand",), 2),                              # unknown command
    (("show", "no-such-profile"), 2),                     # unreadable input
    (("explain", "no_such_control"), 2),
    (("launch", "baseline", "--guest", "builtin:nosuch"), 2),
    (("launch", os.path.join("tests", "data", "vmm", "bad-e19.toml"), "--guest",
      "builtin:hlt"), None),
])
def test_every_json_failure_is_a_json_error_with_the_same_status(args, code, write_profile):
    if args[1:2] == (os.path.join("tests", "data", "vmm", "bad-e19.toml"),):
        p = write_profile('[profile]\nextends = "baseline"\n[pin]\nvirtual_nmis = true\n')
        args = ("launch", p, "--guest", "builtin:hlt")
        code = 1
    plain = vmcfg(*args)
    js = vmcfg(*args, "--json")
    assert plain.returncode == js.returncode == code, (plain.stderr, js.stderr)
    doc = json.loads(js.stdout)
    check("error", doc)
    assert doc["exit_status"] == code and doc["error"]["message"]
    if code == 1:
        assert doc["status"] == "invalid" and doc["errors"][0]["rule"] == "E19"


# ---- one status table ------------------------------------------------------------------

def test_statuses_and_codes_come_from_the_one_table(cli):
    from vmcfg import status as S
    from vmcfg.smoke.model import STATUSES as SMOKE
    from vmcfg.vmm.run import STATUSES as RUN
    assert SMOKE == RUN == S.LAUNCH_STATUSES
    r = cli("launch", "--help")
    for o in S.OUTCOMES:
        if o.name != "ok":
            assert re.search(rf"\b{o.code}\s+{re.escape(o.name)}:", r.stdout), o.name
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert S.table_markdown() in readme, "README's status table is not the one in vmcfg/status.py"
    # a guest's own debug-exit value is never mapped onto vmcfg's codes
    assert S.exit_code("debug-exit", 0) == 0
    assert {S.exit_code("debug-exit", v) for v in (1, 2, 15, 255)} == {S.GUEST_FAILURE}
    codes = [o.code for o in S.OUTCOMES if o.code]
    assert len(codes) == len(set(codes)), "two outcomes share a non-zero exit status"


def test_guest_value_in_its_own_field(cli):
    r = cli("launch", "baseline", "--guest", "builtin:selftest", "--json")
    d = json.loads(r.stdout)
    assert d["guest_exit_code"] == 15 and r.exit_code == d["exit_status"] == 3


# ---- one size grammar ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["16M", "16MiB", "16MB", "16m", "0x1000000", "16777216",
                                  16777216, "16_777_216", "16384K"])
def test_one_size_grammar(text):
    from vmcfg.vmx.sizes import parse_size
    assert parse_size(text) == 16 << 20


@pytest.mark.parametrize("text", ["lots", "16Q", "-1", "", "1.5M", True])
def test_bad_sizes_are_refused(text):
    from vmcfg.vmx.sizes import parse_size
    with pytest.raises(ValueError, match="16M, 16MiB, 0x1000000 or 16777216"):
        parse_size(text)


def test_sizes_everywhere(cli, write_profile, tmp_path):
    for spelling in ("0x1000000", "16MiB", "16777216"):
        p = write_profile(f'[profile]\nextends = "baseline"\n[guest]\nmemory = "{spelling}"\n',
                          "m.toml")
        assert cli("validate", p).exit_code == 0, spelling
        r = cli("launch", p, "--guest", "builtin:cpuid", "--json")
        assert r.exit_code == 0, r.stderr
    for spelling in ("0x1000000", "16MiB", "32M"):
        assert cli("launch", "baseline", "--guest", "builtin:cpuid", "--memory",
                   spelling).exit_code == 0, spelling
    smoke = tmp_path / "s.toml"
    smoke.write_text('[[case]]\nprofile = "baseline"\nguest = "builtin:hlt"\nmemory = "0x2000000"\n')
    assert cli("smoke", str(smoke), "--list").exit_code == 0


def test_apply_ept_isolated_to_a_default_memory_guest_is_not_refused():
    """guest.memory 16M (the default) and 0x1000000 are the same size: no change to refuse."""
    from vmcfg.profile import resolve
    from vmcfg.vmx.configdiff import diff_configs
    base, ept = resolve("baseline", cpu="cvmm"), resolve("ept-isolated", cpu="cvmm")
    keys = [d["key"] for d in diff_configs(base.config, ept.config) if not d["live"]]
    assert keys == []


# ---- explain, API ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["flexpriority", "flexprio", "rdtsc_exit", "hlt-exit",
                                  "apicv", "E1", "skylake"])
def test_explain_suggests_only_names_it_explains(name):
    from vmcfg.vmx.explain import explain, suggestions
    for s in suggestions(name):
        assert explain(s) is not None, s


def test_python_api():
    import vmcfg
    r = vmcfg.validate("baseline", cpu="penryn")
    assert r.valid is False and r.errors
    plan = vmcfg.plan("baseline", guest="builtin:cpuid", memory="0x2000000")
    assert plan.memory == 32 << 20 and plan.mode == 64
    seen = []
    res = vmcfg.launch(plan, console=seen.append)
    assert res.status == "debug-exit" and res.exit_status == 0
    assert res.exits == [{"reason": 10, "name": "CPUID", "count": 3}]
    assert "".join(seen).startswith("cpuid: vendor GenuineIntel")
    with pytest.raises(vmcfg.PlanError) as e:
        vmcfg.plan("baseline", guest="builtin:nosuch")
    assert e.value.status == "usage" and e.value.code == 2
    with pytest.raises(vmcfg.LiveError):
        vmcfg.stats("no-such-guest")


# ---- structure ------------------------------------------------------------------------

def test_one_exit_point_and_a_thin_cli():
    pkg = os.path.join(ROOT, "vmcfg")
    for dirpath, _dirs, files in os.walk(pkg):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            text = open(path, encoding="utf-8").read()
            rel = os.path.relpath(path, ROOT)
            if rel != os.path.join("vmcfg", "cli", "main.py"):
                assert "sys.exit(" not in text, f"{rel}: sys.exit outside vmcfg/cli/main.py"
            if os.path.basename(dirpath) == "cli":
                assert text.count("\n") <= 300, f"{rel}: {text.count(chr(10))} lines"


def test_no_switch_over_setting_kinds_outside_kinds_py():
    """`s.kind == "bool"` and the like: what a kind does belongs to its class in vmx/kinds.py."""
    import ast
    from vmcfg.vmx.kinds import KINDS
    found = []
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "vmcfg")):
        for f in files:
            path = os.path.join(dirpath, f)
            if not f.endswith(".py") or path.endswith(os.path.join("vmx", "kinds.py")):
                continue
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) \
                        and node.left.attr == "kind":
                    for right in node.comparators:
                        items = right.elts if isinstance(right, (ast.Tuple, ast.Set)) else [right]
                        if any(isinstance(i, ast.Constant) and i.value in KINDS for i in items):
                            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert found == []


def test_every_setting_kind_has_one_class():
    """Setting kinds as data: each kind of the settings table is one class of vmx/kinds.py,
    and its parse/literal round-trip holds on every default."""
    from vmcfg.vmx.kinds import KINDS, kind_of
    from vmcfg.vmx.settings import SETTINGS
    assert {s.kind for s in SETTINGS} <= set(KINDS)
    for s in SETTINGS:
        k = kind_of(s)
        if s.default is None or s.key == "*":
            continue
        v = k.parse(s, s.default)
        assert k.parse(s, v) == v, s.path
        import tomllib
        assert k.parse(s, tomllib.loads(f"x = {k.literal(s, v)}")["x"]) == v, s.path


# ---- one home for each fact: exit reasons, statuses, vector bounds ----------------------

def test_exit_reasons_come_from_the_one_table():
    """Every layer names exit reasons through vmx/exits.py: the enum, the handlers' table,
    the control table, explain and the profile schema all derive from EXIT_REASONS."""
    from vmcfg.vmm.handlers import DEFAULT_HANDLERS
    from vmcfg.vmx.exits import EXIT_BY_NUMBER, EXIT_REASONS, Exit, exit_name
    from vmcfg.vmx.explain import explain
    from vmcfg.vmx.schema import profile_schema
    from vmcfg.vmx.table import CONTROLS
    reasons = {r.number: r.name for r in EXIT_REASONS}
    assert {int(e): e.name for e in Exit} == reasons
    assert len(reasons) == len(EXIT_REASONS), "two rows of the exit table share a number"
    assert all(isinstance(k, Exit) for k in DEFAULT_HANDLERS), "a handler keyed by a bare number"
    for c in CONTROLS:
        assert set(c.exits) <= set(reasons), c.path
    for n, name in reasons.items():
        assert exit_name(n) == name and EXIT_BY_NUMBER[n].name == name
        assert explain(str(n)) is not None and explain(name) is not None, name
    handlers = profile_schema()["properties"]["handlers"]["propertyNames"]["anyOf"][0]["enum"]
    assert handlers == list(reasons.values())


def _bare_exit_numbers(path: str) -> list[str]:
    """`reason == 16`, `reason in (10, 12)` and `VmExit(16, ...)` in one source file."""
    import ast
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []

    def is_int(n):
        return isinstance(n, ast.Constant) and type(n.value) is int

    def names_reason(n):
        return (isinstance(n, ast.Attribute) and "reason" in n.attr) or \
               (isinstance(n, ast.Name) and "reason" in n.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and names_reason(node.left):
            for right in node.comparators:
                items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
                if any(is_int(i) for i in items):
                    found.append(f"{path}:{node.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "VmExit" \
                and node.args and is_int(node.args[0]):
            found.append(f"{path}:{node.lineno}")
    return found


def test_no_bare_exit_reason_numbers():
    """Exit reasons are written as Exit.NAME, never as numbers, outside vmx/exits.py."""
    pkg = os.path.join(ROOT, "vmcfg")
    bare = []
    for dirpath, _dirs, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                bare += _bare_exit_numbers(os.path.join(dirpath, f))
    assert bare == []


def test_statuses_and_vector_bounds_have_one_home():
    """The launch report's statuses, the JSON error statuses and the vector bounds that
    the profile, the live channel and the rules check come from status.py and exits.py."""
    from vmcfg import status as S
    from vmcfg.profile import load_caps, load_profile, resolve_profile
    from vmcfg.report_schemas import schema
    from vmcfg.vmx import exits as X
    from vmcfg.vmx.kinds import KINDS
    from vmcfg.vmx.settings import SETTING_BY_PATH
    run = schema("launch")["$defs"]["run_result"]["properties"]["status"]["enum"]
    assert run == list(S.LAUNCH_STATUSES)
    for o in S.OUTCOMES:
        if not o.launch:
            assert S.name_of(o.code) == o.name and S.exit_code(o.name) == o.code
    assert X.LAST_EXCEPTION_VECTOR + 1 == X.FIRST_EXTERNAL_VECTOR
    vectors = KINDS["vectors"]
    s = SETTING_BY_PATH["exceptions.intercept"]
    assert vectors.parse(s, [X.LAST_EXCEPTION_VECTOR]) == [X.LAST_EXCEPTION_VECTOR]
    with pytest.raises(ValueError, match=f"0-{X.LAST_EXCEPTION_VECTOR}"):
        vectors.parse(s, [X.FIRST_EXTERNAL_VECTOR])
    for vector, ok in ((X.LAST_EXCEPTION_VECTOR, True), (X.FIRST_EXTERNAL_VECTOR, False)):
        prof = load_profile("baseline")
        prof.settings["inject"] = {"type": X.InterruptionType.HW_EXCEPTION.name.lower(),
                                   "vector": vector}
        res = resolve_profile(prof, load_caps("cvmm", None))
        assert ("N4" in {e.rule for e in res.errors}) != ok, vector


# ---- the vCPU package --------------------------------------------------------------------

def test_vcpu_parts_name_exit_reasons_and_do_not_import_in_a_circle():
    """The vCPU is one module per part of its state; exits are named by `Exit`, never by a
    number; the default handlers and the run's outcome do not import the vCPU back."""
    import ast
    import pathlib
    pkg = pathlib.Path(ROOT, "vmcfg", "vmm", "vcpu")
    parts = sorted(p.stem for p in pkg.glob("*.py"))
    assert {"core", "registers", "memory", "codepages", "intercepts", "events", "vtime",
            "reconfig", "runloop"} <= set(parts)
    bare = re.compile(r"\b(?:_exit|_trap_exit|VmExit|_entry_exit)\(\s*\d")
    for p in pkg.glob("*.py"):
        text = p.read_text()
        assert not bare.search(text), f"{p.name}: an exit reason written as a number"
        assert len(text.splitlines()) < 800, f"{p.name} is growing back into a monolith"
    for leaf in ("handlers.py", "outcome.py"):
        tree = ast.parse(pathlib.Path(ROOT, "vmcfg", "vmm", leaf).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "vcpu" not in (node.module or ""), f"{leaf} imports the vCPU back"


def test_no_merge_conflict_markers_are_committed():
    import pathlib
    marker = re.compile(r"^(<{7}|>{7}) ", re.M)
    bad = []
    for sub in ("vmcfg", "tests", "bench", "tools", "docs", "profiles"):
        for p in pathlib.Path(ROOT, sub).rglob("*"):
            if p.suffix in (".py", ".md", ".toml", ".c", ".asm", ".inc") and p.is_file():
                if marker.search(p.read_text(errors="replace")):
                    bad.append(str(p))
    for name in ("README.md", "CHANGELOG.md", "pyproject.toml", "setup.py"):
        if marker.search(pathlib.Path(ROOT, name).read_text()):
            bad.append(name)
    assert not bad, f"merge conflict markers in {bad}"
