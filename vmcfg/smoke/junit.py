"""JUnit XML, as Jenkins, GitLab, Azure DevOps and the GitHub test-report actions read it.

One <testsuite> per smoke file; one <testcase> per case (name = case id,
classname = SUITE.PROFILE, so CI systems group cases by profile); <failure>
for unmet expectations, <error> for cases that produced no result (crash,
killed, invalid profile), <skipped> for `skip = ...`; the guest console in
<system-out>, launch's stderr in <system-err>.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import tempfile
import xml.etree.ElementTree as ET
from typing import Sequence

from .runner import CaseResult, display_command

TEXT_LIMIT = 64 * 1024
# characters XML 1.0 cannot carry, even escaped
_INVALID_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(s: str, limit: int = TEXT_LIMIT) -> str:
    if len(s) > limit:
        s = f"[... {len(s) - limit} characters cut ...]\n" + s[-limit:]
    return _INVALID_XML.sub(lambda m: f"\\x{ord(m.group(0)):02x}", s)


def _class_part(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", s) or "_"


def build(suite_name: str, smoke_file: str, results: Sequence[CaseResult], seconds: float,
          *, timestamp: datetime.datetime | None = None,
          results_dir: str | None = None, shard: str | None = None) -> ET.ElementTree:
    counts = {k: sum(1 for r in results if r.outcome == k)
              for k in ("passed", "failed", "error", "skipped")}
    common = {"tests": str(len(results)), "failures": str(counts["failed"]),
              "errors": str(counts["error"]), "skipped": str(counts["skipped"]),
              "time": f"{seconds:.3f}"}
    root = ET.Element("testsuites", {"name": "vmcfg smoke", **common})
    ts = (timestamp or datetime.datetime.now()).replace(microsecond=0).isoformat()
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, **common, "timestamp": ts,
                                              "hostname": socket.gethostname() or "localhost"})
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "smoke_file", "value": smoke_file})
    if results_dir:
        ET.SubElement(props, "property", {"name": "results_dir", "value": results_dir})
    if shard:
        ET.SubElement(props, "property", {"name": "shard", "value": shard})
    cls = _class_part(suite_name)
    for r in results:
        c = r.case
        attrs = {"name": c.id, "classname": f"{cls}.{_class_part(c.profile_name)}",
                 "time": f"{r.seconds:.3f}", "file": smoke_file}
        if c.line:
            attrs["line"] = str(c.line)
        tc = ET.SubElement(suite, "testcase", attrs)
        if r.outcome == "skipped":
            ET.SubElement(tc, "skipped", {"message": _clean(c.skip or "", 1000)})
            continue
        if r.outcome in ("failed", "error"):
            tag = "failure" if r.outcome == "failed" else "error"
            reasons = r.reasons
            head = reasons[0] if len(reasons) == 1 else \
                f"{len(reasons)} expectations failed: " + "; ".join(reasons)
            body = list(reasons)
            if r.result is not None:
                from .expect import result_summary
                body.append(f"result: {result_summary(r.result)}")
            if r.artifacts:
                body.append(f"artefacts: {r.artifacts}")
            body.append(f"rerun: {display_command(c)}")
            body.append(f"defined at: {c.where}")
            el = ET.SubElement(tc, tag, {"message": _clean(head, 4000),
                                         "type": "expectation" if tag == "failure" else
                                         "launch-error"})
            el.text = _clean("\n".join(body))
        console = (r.result or {}).get("console")
        if isinstance(console, str) and console:
            ET.SubElement(tc, "system-out").text = _clean(console)
        if r.stderr.strip():
            ET.SubElement(tc, "system-err").text = _clean(r.stderr)
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: str, tree: ET.ElementTree) -> None:
    """Write atomically (a CI step reading a half-written file sees nothing instead)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".junit-", suffix=".xml", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            tree.write(fh, encoding="utf-8", xml_declaration=True)
            fh.write(b"\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- merging the reports of several shards ----------------------------------------

class MergeError(Exception):
    """JUnit files that cannot be merged (message names the file, and line:column)."""


_COUNTS = ("tests", "failures", "errors", "skipped")


def merge(paths: Sequence[str]) -> tuple[ET.ElementTree, dict]:
    """One JUnit report from several (the shards of one smoke run, or any JUnit XML).

    Test suites with the same name become one suite: their test cases are
    concatenated in the order of `paths`, the counts and times added up, and the
    earliest timestamp kept.  A test case (classname + name) present in two
    files is an error: the shards overlapped.  Returns the tree and a summary
    {"files", "tests", "passed", "failures", "errors", "skipped", "time", "suites"}.
    """
    if not paths:
        raise MergeError("no JUnit files to merge")
    suites: dict[str, ET.Element] = {}
    seen: dict[tuple[str, str], str] = {}
    stamps: dict[str, str] = {}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            line, col = e.position
            raise MergeError(f"{path}:{line}:{col + 1}: not well-formed XML") from None
        except OSError as e:
            raise MergeError(f"{path}: {e.strerror}") from None
        if root.tag == "testsuite":
            found = [root]
        elif root.tag == "testsuites":
            found = root.findall("testsuite")
        else:
            raise MergeError(f"{path}: not a JUnit report (root element <{root.tag}>, "
                             "expected <testsuites> or <testsuite>)")
        for ts in found:
            name = ts.get("name", "")
            out = suites.get(name)
            if out is None:
                out = suites[name] = ET.Element("testsuite", {"name": name})
                for k in _COUNTS:
                    out.set(k, "0")
                out.set("time", "0.000")
                ET.SubElement(out, "properties")
            props = out.find("properties")
            have = {(p.get("name"), p.get("value")) for p in props}
            for p in ts.findall("properties/property"):
                if (p.get("name"), p.get("value")) not in have:
                    props.append(p)
                    have.add((p.get("name"), p.get("value")))
            for tc in ts.findall("testcase"):
                key = (tc.get("classname", ""), tc.get("name", ""))
                if key in seen:
                    raise MergeError(f"{path}: test case {key[1]!r} ({key[0]}) is also in "
                                     f"{seen[key]}: the shards overlap")
                seen[key] = path
                out.append(tc)
            try:
                t = float(out.get("time", "0")) + float(ts.get("time", "0") or 0)
            except ValueError:
                raise MergeError(f"{path}: testsuite {name!r} has a time that is not a number")
            out.set("time", f"{t:.3f}")
            if ts.get("timestamp") and (name not in stamps or ts.get("timestamp") < stamps[name]):
                stamps[name] = ts.get("timestamp")
            if ts.get("hostname"):
                hosts = [h for h in (out.get("hostname") or "").split(",") if h]
                if ts.get("hostname") not in hosts:
                    out.set("hostname", ",".join(hosts + [ts.get("hostname")]))
    total = {k: 0 for k in _COUNTS}
    seconds = 0.0
    root = ET.Element("testsuites", {"name": "vmcfg smoke"})
    for name, ts in suites.items():
        cases = ts.findall("testcase")
        n = {"tests": len(cases),
             "failures": sum(1 for c in cases if c.find("failure") is not None),
             "errors": sum(1 for c in cases if c.find("error") is not None),
             "skipped": sum(1 for c in cases if c.find("skipped") is not None)}
        for k in _COUNTS:
            ts.set(k, str(n[k]))
            total[k] += n[k]
        if name in stamps:
            ts.set("timestamp", stamps[name])
        if not len(ts.find("properties")):
            ts.remove(ts.find("properties"))
        seconds += float(ts.get("time"))
        root.append(ts)
    for k in _COUNTS:
        root.set(k, str(total[k]))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    summary = {"files": len(paths), "suites": len(suites), **total,
               "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
               "time": round(seconds, 3)}
    return ET.ElementTree(root), summary
