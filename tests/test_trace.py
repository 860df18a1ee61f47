"""Traces (issue 17): host handling time per exit, `vmcfg trace summary|export`,
gzip and sampled traces, bounded memory on large traces, bad input."""

import gzip
import json
import os
import random
import subprocess
import sys

import pytest

from vmcfg.vmx.exits import EXIT_BY_NUMBER, Exit


def _launch(cli, tmp_path, *extra, trace="t.jsonl", profile="trap-all", guest="builtin:exits-all"):
    tr = tmp_path / trace
    r = cli("launch", profile, "--guest", guest, "--json", "--trace", str(tr), *extra)
    doc = json.loads(r.stdout)
    return doc, tr


def _exits(doc):
    return {e["name"]: e["count"] for e in doc["exits"]}


def validate_trace_events(doc):
    """Check a Chrome Trace Event (JSON Object Format) document; returns the
    thread tracks {tid: name} and the complete events."""
    assert set(doc) >= {"traceEvents"}
    assert doc.get("displayTimeUnit") in ("ns", "ms")
    evs = doc["traceEvents"]
    assert isinstance(evs, list) and evs
    tracks, slices, last = {}, [], None
    for e in evs:
        assert {"name", "ph", "pid", "tid", "ts"} <= set(e), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if last is not None:
            assert e["ts"] >= last, f"timestamps go back at {e}"
        last = e["ts"]
        ph = e["ph"]
        assert ph in ("X", "i", "C", "M"), e
        if ph == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index")
            assert isinstance(e["args"], dict)
            if e["name"] == "thread_name":
                assert e["tid"] not in tracks, "one thread_name per track"
                tracks[e["tid"]] = e["args"]["name"]
        elif ph == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
            assert tracks[e["tid"]] == e["name"], "each exit on its reason's track"
            slices.append(e)
        elif ph == "i":
            assert e.get("s") in ("g", "p", "t")
            assert tracks[e["tid"]] == e["name"]
            slices.append(e)
        elif ph == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
    # one track per reason, named after vmx/exits.py
    names = list(tracks.values())
    assert len(names) == len(set(names))
    for tid, name in tracks.items():
        assert EXIT_BY_NUMBER[tid - 1].name == name
    # slices on one track never overlap (they nest cleanly in Perfetto)
    end = {}
    for e in slices:
        assert e["ts"] >= end.get(e["tid"], 0) - 1e-9
        end[e["tid"]] = e["ts"] + e.get("dur", 0)
    return tracks, slices


def test_trace_records_host_time_of_each_exit(cli, tmp_path):
    doc, tr = _launch(cli, tmp_path)
    recs = [json.loads(x) for x in tr.read_text().splitlines()]
    assert len(recs) == sum(_exits(doc).values()) > 300
    assert all(isinstance(r["host_ns"], int) and r["host_ns"] > 0 for r in recs)
    ats = [r["host_at_ns"] for r in recs]
    assert ats == sorted(ats)
    assert all(a["host_at_ns"] + a["host_ns"] <= b["host_at_ns"] for a, b in zip(recs, recs[1:]))


def test_summary_counts_equal_the_runs_exits(cli, tmp_path):
    doc, tr = _launch(cli, tmp_path)
    r = cli("trace", "summary", str(tr), "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert {x["name"]: x["count"] for x in s["reasons"]} == _exits(doc)
    assert s["exits"] == sum(_exits(doc).values())
    assert abs(sum(x["share"] for x in s["reasons"]) - 1) < 1e-3
    assert sum(x["host_ns"] for x in s["reasons"]) == s["host_ns"]
    # ordered by host time; the busiest reason's RIPs come with their instruction
    assert [x["host_ns"] for x in s["reasons"]] == sorted((x["host_ns"] for x in s["reasons"]),
                                                          reverse=True)
    io = next(x for x in s["reasons"] if x["reason"] == Exit.IO_INSTRUCTION)
    assert io["median_ns"] <= io["p99_ns"] <= io["max_ns"]
    assert {t["disassembly"] for t in io["top_rips"][:2]} == {"in al,dx", "out dx,al"}
    assert sum(t["count"] for t in io["top_rips"]) <= io["count"]
    # the text form, to stdout
    r = cli("trace", "summary", str(tr))
    assert r.exit_code == 0 and "IO_INSTRUCTION" in r.stdout and "in al,dx" in r.stdout
    assert f"{s['exits']:,} exits" in r.stdout


def test_export_is_valid_trace_event_json_with_one_track_per_reason(cli, tmp_path):
    doc, tr = _launch(cli, tmp_path)
    out = tmp_path / "t.json"
    r = cli("trace", "export", str(tr), "--format", "perfetto", "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and "ui.perfetto.dev" in r.stderr
    ev = json.loads(out.read_text())
    tracks, slices = validate_trace_events(ev)
    assert sorted(tracks.values()) == sorted(_exits(doc))
    assert len(slices) == sum(_exits(doc).values())
    assert all(e["ph"] == "X" for e in slices)
    counters = [e for e in ev["traceEvents"] if e["ph"] == "C"]
    assert counters and set(counters[0]["args"]) <= set(_exits(doc))
    assert counters[-1]["args"] and all(v == 0 for v in counters[-1]["args"].values())
    # the guest-TSC timeline: instants at the virtual TSC
    r = cli("trace", "export", str(tr), "--clock", "tsc")
    ev = json.loads(r.stdout)
    _, inst = validate_trace_events(ev)
    recs = [json.loads(x) for x in tr.read_text().splitlines()]
    assert [e["ts"] * 1000 for e in inst] == pytest.approx([x["tsc"] for x in recs])


def test_gzip_and_sampled_trace(cli, tmp_path):
    doc, tr = _launch(cli, tmp_path, "--trace-sample", "10", "--max-instructions", "60000",
                      trace="s.jsonl.gz", guest="builtin:soak")
    raw = tr.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    lines = gzip.decompress(raw).decode().splitlines()
    total = sum(_exits(doc).values())
    assert total > 5000
    recs = [json.loads(x) for x in lines[:-1]]
    assert len(recs) < total // 5 and all(x["sample"] == 10 for x in recs)
    assert json.loads(lines[-1])["totals"]["sample"] == 10
    r = cli("trace", "summary", str(tr), "--json")
    s = json.loads(r.stdout)
    assert s["counts_exact"] and s["sample"] == 10 and s["records"] == len(recs)
    assert {x["name"]: x["count"] for x in s["reasons"]} == _exits(doc)
    r = cli("trace", "export", str(tr))
    ev = json.loads(r.stdout)
    validate_trace_events(ev)
    assert ev["otherData"]["exits"] == total


def test_sketch_quantiles_within_documented_error_and_top_keys():
    from vmcfg.trace.sketch import LogHistogram, TopCounter
    rnd = random.Random(17)
    vals = [int(rnd.lognormvariate(9, 1.5)) for _ in range(50_000)] + [0] * 10
    h = LogHistogram(0.01)
    for v in vals:
        h.add(v)
    vals.sort()
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = vals[int(q * (len(vals) - 1))]
        assert abs(h.quantile(q) - exact) <= 0.01 * exact + 1e-9
    assert len(h) < 1100                      # bounded, whatever the count
    t = TopCounter(8)
    for i in range(20_000):                   # two heavy keys among 5,000 distinct light ones
        t.add("hot" if i % 3 == 0 else ("warm" if i % 5 == 0 else i), 1)
    top = t.top(2)
    assert [k for k, _, _ in top] == ["hot", "warm"]
    for key, n, e in top:
        true = sum(1 for i in range(20_000) if (i % 3 == 0) == (key == "hot")
                   and (key == "hot" or (i % 5 == 0 and i % 3)))
        assert n - e <= true <= n
    assert len(t.counts) == 8


def _synthetic(path, n):
    """A trace of n exits over 4 reasons, gzip level 1 (small on disk)."""
    reasons = (Exit.IO_INSTRUCTION, Exit.RDTSC, Exit.CPUID, Exit.HLT)
    at = 0
    with gzip.open(path, "wt", compresslevel=1) as fh:
        w = fh.write
        for i in range(1, n + 1):
            r = reasons[i & 3]
            ns = 2000 + (i * 7919) % 40000
            w(f'{{"seq":{i},"instructions":{i * 9},"tsc":{i * 1009},"rip":{0x100000 + (i % 97)},'
              f'"reason":{int(r)},"name":"{r.name}","qualification":0,"length":2,"bytes":"0fa2",'
              f'"disassembly":"cpuid","host_ns":{ns},"host_at_ns":{at}}}\n')
            at += ns + 500


def _peak_rss_kib(args):
    """Peak RSS (KiB) of a child running `vmcfg ARGS`."""
    p = subprocess.Popen([sys.executable, "-m", "vmcfg.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, p.stderr.read()
    return ru.ru_maxrss


# one test per command, so that a parallel run (-n) does the two on two workers at once; the
# default run streams 250,000 exits (holding them would take well over the 16 MiB allowed),
# VMCFG_SLOW=1 also a million
_SLOW = pytest.mark.skipif(os.environ.get("VMCFG_SLOW") != "1",
                           reason="a million exits take a minute: VMCFG_SLOW=1 runs them")


@pytest.mark.parametrize("n", [250_000, pytest.param(1_000_000, marks=[pytest.mark.slow, _SLOW])])
@pytest.mark.parametrize("cmd", [["export"], ["summary", "--json"]], ids=["export", "summary"])
def test_many_exits_export_and_summarise_in_bounded_memory(tmp_path, cmd, n):
    small, big = tmp_path / "small.jsonl.gz", tmp_path / "big.jsonl.gz"
    _synthetic(small, 10_000)
    _synthetic(big, n)
    out_s, out_b = tmp_path / "s.out", tmp_path / "b.out"
    rs = _peak_rss_kib(["trace", *cmd, str(small), "-o", str(out_s)])
    rb = _peak_rss_kib(["trace", *cmd, str(big), "-o", str(out_b)])
    # n / 10,000 times the exits: the output grows as much, the memory does not
    # (holding 250,000 records would take well over 100 MiB)
    assert rb - rs < 16 * 1024, (cmd, rs, rb)
    if cmd == ["export"]:
        assert out_b.stat().st_size > n // 20_000 * out_s.stat().st_size
    else:
        s = json.loads(out_b.read_text())
        assert s["exits"] == n
        assert {x["name"]: x["count"] for x in s["reasons"]} == {
            name: n // 4 for name in ("IO_INSTRUCTION", "RDTSC", "CPUID", "HLT")}


@pytest.mark.parametrize("content, where, what", [
    (b"hello, world\n", ":1:", "not a vmcfg trace"),
    (b'{"a": 1}\n', ":1:", "not a vmcfg trace"),
    (b'{"seq":1,"reason":10,"tsc":5}\n{"seq":2,"reason":10,"tsc":9}\n{"seq":3,"reas\n', ":3:",
     "bad JSON"),
    (b'{"seq":1,"reason":10,"tsc":5}\n{"seq":2,"reason":10', ":2:", "truncated JSON"),
    (b'{"seq":1,"reason":"CPUID"}\n', ":1:", "exit-reason number"),
    (b'{"seq":1,"reason":10,"host_ns":-4}\n', ":1:", "host_ns"),
])
def test_bad_traces_get_a_message_with_the_line_and_status_2(cli, tmp_path, content, where, what):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    out = tmp_path / "out.json"
    out.write_text("keep me")
    for sub in ("summary", "export"):
        r = cli("trace", sub, str(p), "-o", str(out))
        assert r.exit_code == 2
        assert f"{p}{where}" in r.stderr and what in r.stderr and "Traceback" not in r.stderr
        assert out.read_text() == "keep me"          # -o is never half-written
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_export_names_the_line_of_a_record_it_cannot_place(cli, tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"seq":1,"reason":10,"tsc":5,"host_ns":3,"host_at_ns":7}\n'
                 '{"seq":2,"reason":10,"tsc":9}\n')
    r = cli("trace", "export", str(p), "-o", str(tmp_path / "o.json"))
    assert r.exit_code == 2 and f"{p}:2: exit seq 2 has no host_at_ns" in r.stderr
    assert "--clock tsc" in r.stderr and not (tmp_path / "o.json").exists()
    r = cli("trace", "export", str(p), "--clock", "tsc")
    assert r.exit_code == 0
    assert len(validate_trace_events(json.loads(r.stdout))[1]) == 2


def test_truncated_gzip_and_missing_file(cli, tmp_path):
    good = tmp_path / "g.jsonl.gz"
    _synthetic(good, 20_000)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = cli("trace", "summary", str(cut))
    assert r.exit_code == 2 and "gzip stream is truncated" in r.stderr
    assert r.stdout == ""
    r = cli("trace", "export", str(tmp_path / "nope.jsonl"))
    assert r.exit_code == 2 and "cannot read" in r.stderr


def test_a_trace_trimmed_by_smoke_is_read_with_a_note(cli, tmp_path):
    from vmcfg.smoke.runner import _trim_trace
    p = tmp_path / "trace.jsonl"
    with open(p, "w") as fh:
        for i in range(1, 3001):
            fh.write(json.dumps({"seq": i, "reason": int(Exit.CPUID), "rip": 0x1000, "tsc": i,
                                 "disassembly": "cpuid", "host_ns": 100, "host_at_ns": i * 200})
                     + "\n")
    _trim_trace(str(p), limit=64 * 1024)
    kept = sum(1 for ln in p.read_text().splitlines() if '"seq"' in ln)
    assert kept < 3000
    r = cli("trace", "summary", str(p), "--json")
    assert r.exit_code == 0 and "trimmed" in r.stderr
    assert json.loads(r.stdout)["exits"] == kept
    r = cli("trace", "export", str(p))
    assert r.exit_code == 0
    assert len(validate_trace_events(json.loads(r.stdout))[1]) == kept
