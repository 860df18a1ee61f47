"""`vmcfg smoke --shard K/N` and `vmcfg smoke merge`, run as a CI job runs them (subprocesses).

Every case lands in exactly one shard, the split does not depend on the machine (hash seed,
order of the file), and the JUnit reports of the shards merge into one report that holds each
case once.  The CI snippets of docs/smoke.md are run as written (with the CI's variables set).
"""

import json

import jsonschema
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "examples", "smoke.toml")
DOC = os.path.join(ROOT, "docs", "smoke.md")


def vmcfg(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def listed(path, *args, env=None) -> list[str]:
    """The ids `vmcfg smoke PATH --list --json ARGS` names: in-process (the CLI's own code,
    quick), or in a subprocess when an environment is given."""
    if env is None:
        from click.testing import CliRunner
        from vmcfg.cli.main import cli
        r = CliRunner().invoke(cli, ["smoke", path, "--list", "--json", *args],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        out = r.stdout
    else:
        r = vmcfg("smoke", path, "--list", "--json", *args, env=env)
        assert r.returncode == 0, r.stderr
        out = r.stdout
    return [c["id"] for c in json.loads(out)["cases"]]


def test_every_case_is_in_exactly_one_shard():
    everything = listed(EXAMPLE)
    assert len(everything) > 10
    for n in (1, 2, 3, 4, 7, len(everything) + 2):
        shards = [listed(EXAMPLE, "--shard", f"{k}/{n}") for k in range(1, n + 1)]
        flat = [cid for s in shards for cid in s]
        assert sorted(flat) == sorted(everything), n          # all, and each once
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1, (n, sizes)       # balanced
        for s in shards:                                      # a shard keeps the file's order
            assert s == [cid for cid in everything if cid in s]


def test_shards_are_the_same_on_every_machine(tmp_path):
    """Another hash seed, another order of the cases in the file: the same slices."""
    text = (tmp_path / "a.toml")
    cases = [f'[[case]]\nid = "c{i:02d}"\nprofile = "baseline"\nguest = "builtin:hlt"\n'
             for i in range(13)]
    text.write_text("\n".join(cases))
    rev = tmp_path / "b.toml"
    rev.write_text("\n".join(reversed(cases)))
    for k in (1, 2, 3):
        a = listed(str(text), "--shard", f"{k}/3", env={"PYTHONHASHSEED": "1"})
        b = listed(str(rev), "--shard", f"{k}/3", env={"PYTHONHASHSEED": "2"})
        assert a and sorted(a) == sorted(b)
    # -k first, then the shards split what -k selected
    sel = listed(str(text), "-k", "c0")
    parts = [listed(str(text), "-k", "c0", "--shard", f"{k}/2") for k in (1, 2)]
    assert sorted(parts[0] + parts[1]) == sorted(sel) and not set(parts[0]) & set(parts[1])


@pytest.mark.parametrize("bad", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_bad_shard_is_a_usage_error(bad, cli):
    r = cli("smoke", EXAMPLE, "--shard", bad, "--list")
    assert r.exit_code == 2 and "--shard" in r.stderr


SMOKE = """\
[smoke]
name = "sharded"

[[matrix]]
profiles = ["baseline"]
guests = ["builtin:hlt", "builtin:cpuid", "builtin:hello32"]
[[matrix.cell]]
guest = "cpuid"
expect.exit_code = 0
[[matrix.cell]]
guest = "hello32"
mode = 32
expect.status = "entry-failure"     # a 32-bit guest with paging off needs unrestricted guest

[[case]]
id = "must-fail"
profile = "baseline"
guest = "builtin:cpuid"
expect.exit_code = 7
"""


def test_shards_run_and_their_junit_reports_merge(tmp_path):
    (tmp_path / "s.toml").write_text(SMOKE)
    ids = listed(str(tmp_path / "s.toml"))
    assert len(ids) == 4
    for k in (1, 2, 3):      # 3 shards of 4 cases; each one a separate "machine"
        r = vmcfg("smoke", "s.toml", "--shard", f"{k}/3", "-j", "2", "--junit", f"junit-{k}.xml",
                  "--results", f"results-{k}", cwd=tmp_path)
        assert r.returncode in (0, 1), r.stderr
        root = ET.parse(tmp_path / f"junit-{k}.xml").getroot()
        props = {p.get("name"): p.get("value") for p in root.iter("property")}
        assert props["shard"] == f"{k}/3"
    r = vmcfg("smoke", "merge", "-o", "all.xml", "junit-1.xml", "junit-2.xml", "junit-3.xml",
              cwd=tmp_path)
    assert r.returncode == 1, r.stderr            # one case fails on purpose
    assert r.stdout.strip() == "3 passed, 1 failed, 0 errors, 0 skipped in 4 cases from 3 reports"
    root = ET.parse(tmp_path / "all.xml").getroot()
    (suite,) = root.findall("testsuite")
    names = [tc.get("name") for tc in suite.findall("testcase")]
    assert sorted(names) == sorted(ids)
    assert (root.get("tests"), root.get("failures")) == ("4", "1")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "0")
    failed = [tc.get("name") for tc in suite.findall("testcase") if tc.find("failure") is not None]
    assert failed == ["must-fail"]
    # the passing shards alone merge to a green report
    good = [f"junit-{k}.xml" for k in (1, 2, 3)
            if ET.parse(tmp_path / f"junit-{k}.xml").getroot().get("failures") == "0"]
    r = vmcfg("smoke", "merge", "-o", "-", *good, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    merged = ET.fromstring(r.stdout)          # the XML alone on stdout, the counts on stderr
    assert merged.get("failures") == "0" and "0 failed" in r.stderr
    r = vmcfg("smoke", "merge", "-o", "-", "--json", *good, cwd=tmp_path)
    assert r.returncode == 2 and "--json" in r.stderr


def test_merge_refuses_overlap_and_garbage(tmp_path):
    a = tmp_path / "a.xml"
    a.write_text('<testsuites><testsuite name="s" tests="1"><testcase classname="s.p" name="x"/>'
                 '</testsuite></testsuites>')
    r = vmcfg("smoke", "merge", "-o", str(tmp_path / "o.xml"), str(a), str(a))
    assert r.returncode == 2 and "overlap" in r.stderr
    assert not (tmp_path / "o.xml").exists()
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites>\n<testsuite name='s'>\n</testsuites>\n")
    r = vmcfg("smoke", "merge", "-o", str(tmp_path / "o.xml"), str(a), str(bad))
    assert r.returncode == 2 and re.search(rf"{re.escape(str(bad))}:3:\d+: not well-formed", r.stderr)
    # a plain pytest-style <testsuite> root merges with vmcfg's <testsuites>
    b = tmp_path / "b.xml"
    b.write_text('<testsuite name="s" tests="1" failures="0"><testcase classname="s.p" name="y"/>'
                 '</testsuite>')
    r = vmcfg("smoke", "merge", "-o", str(tmp_path / "o.xml"), str(a), str(b), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["tests"], doc["passed"], doc["suites"], doc["ok"]) == (2, 2, 1, True)
    from vmcfg.report_schemas import schema
    jsonschema.validate(doc, schema("smoke-merge"))


def _doc_block(title: str) -> str:
    text = open(DOC).read()
    i = text.index(title)
    m = re.compile(r"```yaml\n(.*?)```", re.S).search(text, i)
    return m.group(1)


def _shard_ids(block: str, env: dict) -> list[str]:
    """Run the `vmcfg smoke FILE --shard ...` line of a CI snippet (with the CI's variables
    set, and --list --json added) and return the ids of the cases that job would run."""
    (line,) = [ln.strip() for ln in block.splitlines()
               if "vmcfg smoke" in ln and "--shard" in ln]
    line = re.sub(r"^(- )?(run: )?", "", line)
    for k, v in env.items():
        line = line.replace(k, v)
    args = line.replace("ci/smoke.toml", EXAMPLE).split()[1:] + ["--list", "--json"]
    return listed(args[1], *args[2:])


def test_docs_ci_snippets_split_and_merge():
    everything = sorted(listed(EXAMPLE))
    gh = _doc_block("GitHub Actions matrix")
    assert "--shard ${{ matrix.shard }}/" in gh and "vmcfg smoke merge" in gh
    shards = [int(x) for x in re.search(r"shard: \[([\d, ]+)\]", gh).group(1).split(",")]
    seen = [cid for k in shards for cid in _shard_ids(gh, {"${{ matrix.shard }}": str(k)})]
    assert sorted(seen) == everything
    gl = _doc_block("GitLab `parallel:`")
    assert "--shard $CI_NODE_INDEX/$CI_NODE_TOTAL" in gl and "vmcfg smoke merge" in gl
    total = int(re.search(r"parallel:\s*(\d+)", gl).group(1))
    seen = [cid for k in range(1, total + 1)
            for cid in _shard_ids(gl, {"$CI_NODE_INDEX": str(k), "$CI_NODE_TOTAL": str(total)})]
    assert sorted(seen) == everything
