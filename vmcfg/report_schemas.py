"""The JSON Schemas of every `--json` report, written down once (shipped with the package).

One shape per concept, shared through "$defs": exit counts are always a list
of {reason, name, count}; registers are always an object; every failure is the
error object of `vmcfg.cli.report.error_doc`; launch statuses come from the
status table (vmcfg/status.py).  Print one with `vmcfg schema --report NAME`.
The test suite checks real reports against them (tests/test_structure.py).
"""

from __future__ import annotations

from typing import Any

from .status import LAUNCH_STATUSES, OUTCOMES

BASE = "urn:vmcfg:schema:report:"

_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM = {"type": "number"}
_OPT_INT = {"type": ["integer", "null"]}
_OPT_STR = {"type": ["string", "null"]}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
         closed: bool = False) -> dict:
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {})},
            **({"additionalProperties": False} if closed else {})}


def _arr(items: dict) -> dict:
    return {"type": "array", "items": items}


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


DEFS: dict[str, dict] = {
    # a capability set as `caps show` and `caps import` print it
    "caps_set": _obj({"name": _STR, "msrs": {"type": "object", "additionalProperties": _STR},
                      "controls": {"type": "object"}},
                     {"unknown": _arr(_STR), "notes": _arr(_STR), "partial": _BOOL}),
    # one exit reason with its count: the one shape of exit statistics
    "exit_count": _obj({"reason": {"type": "integer", "minimum": 0},
                        "name": {"type": "string", "pattern": "^[A-Z0-9_]+$"},
                        "count": {"type": "integer", "minimum": 0}}, closed=True),
    "exits": _arr(_ref("exit_count")),
    # general-purpose registers by name, plus rip and rflags
    "registers": {"type": "object", "required": ["rip"],
                  "additionalProperties": {"type": "integer", "minimum": 0},
                  "propertyNames": {"pattern": "^(r[a-z0-9]{1,2}|rip|rflags)$"}},
    "location": _obj({}, {"file": _OPT_STR, "line": _OPT_INT, "column": _OPT_INT}),
    "violation": _obj({"rule": _STR, "message": _STR},
                      {"title": _STR, "fix": _STR, "severity": _STR,
                       "location": {"anyOf": [{"type": "null"}, _ref("location")]}}),
    "resolved": _obj({"profile": _OPT_STR, "valid": _BOOL, "cpu": _STR,
                      "controls": {"type": "object", "additionalProperties": _INT},
                      "errors": _arr(_ref("violation")), "warnings": _arr(_ref("violation"))}),
    "error": _obj({"ok": {"const": False},
                   "status": {"enum": sorted({o.name for o in OUTCOMES})},
                   "exit_status": _INT,
                   "error": _obj({"message": _STR},
                                 {"file": _OPT_STR, "line": _OPT_INT, "column": _OPT_INT})}),
    "run_result": _obj({"status": {"enum": list(LAUNCH_STATUSES)},
                        "guest_exit_code": _OPT_INT, "instructions": _INT, "tsc": _INT,
                        "exits": _ref("exits"), "exit_status": _INT, "message": _STR},
                       {"console": _STR, "wall_seconds": _NUM, "registers": _ref("registers"),
                        "entry_failure": {"type": "object"}, "vpid": _INT,
                        "restarts": {"type": "integer", "minimum": 0},
                        "apicv": _obj({"vtpr": _INT, "vppr": _INT, "rvi": _INT, "svi": _INT,
                                       "virr": {"type": "array", "items": _INT},
                                       "visr": {"type": "array", "items": _INT},
                                       "delivered": _INT, "virtual_eois": _INT,
                                       "posted": _INT})}),
    "snapshot": _obj({"state": _STR, "instructions": _INT, "tsc": _INT,
                      "exits": _ref("exits")}, {"restarts": {"type": "integer", "minimum": 1}}),
    "diff_entry": _obj({"kind": {"enum": ["control", "setting"]}, "key": _STR, "old": {},
                        "new": {}, "live": _BOOL}),
}

REPORTS: dict[str, dict] = {
    "error": _ref("error"),
    "validate": _arr({"anyOf": [_ref("resolved"),
                                _obj({"profile": _STR, "valid": {"const": False},
                                      "error": _obj({"message": _STR})})]}),
    "show": {"allOf": [_ref("resolved"), _obj({"bits": {"type": "object"},
                                               "settings": {"type": "object"}})]},
    "explain": _obj({"kind": {"enum": ["control", "rule", "exit", "exit-reason-value", "setting",
                                       "cpu", "flag",
                                       "ambiguous"]}}),
    "diff": _obj({"kind": _STR, "equal": _BOOL, "a": {"type": "object"},
                  "b": {"type": "object"}}),
    "matrix": _obj({"cpus": _arr(_STR), "profiles": _arr({"type": "object"}),
                    "results": {"type": "object"}, "all_valid": _BOOL}),
    "profiles": _arr(_obj({"name": _STR, "description": _STR, "path": _STR},
                          {"extends": _OPT_STR, "cpu": _OPT_STR})),
    "cpus": _arr(_obj({"name": _STR, "title": _STR, "controls": _INT})),
    "caps": _ref("caps_set"),
    "new": _obj({"profile": _OPT_STR, "valid": _BOOL, "written": _BOOL,
                 "errors": _arr(_ref("violation")), "warnings": _arr(_ref("violation"))}),
    "set": _obj({"profile": _STR, "changes": _arr(_obj({"key": _STR, "op": _STR})),
                 "changed": _BOOL, "written": _BOOL, "valid": {"type": ["boolean", "null"]}}),
    "export": _obj({"format": {"enum": ["raw", "json", "c", "qemu"]}}),
    "launch": _ref("run_result"),
    "launch-detach": _obj({"name": _STR, "pid": _INT, "socket": _STR, "console": _STR,
                           "log": _STR, "state": _OPT_STR}),
    "ps": _arr(_obj({"name": _STR, "pid": _INT, "state": _OPT_STR},
                    {"exits": _OPT_INT, "instructions": _OPT_INT})),
    "stats": _ref("snapshot"),
    # `stats NAME -f --json`: one snapshot per line, with exit rates (per second) by name
    "stats-follow": {"allOf": [_ref("snapshot"),
                               _obj({}, {"rates": {"type": "object",
                                                   "additionalProperties": _NUM}})]},
    # `watch PROFILE --to NAME --json`: one event per line, per save of the profile
    "watch": _obj({"event": {"enum": ["applied", "unchanged", "refused"]}},
                  {"error": _STR, "diff": _arr(_ref("diff_entry")), "applied": _BOOL}),
    "apply": {"anyOf": [
        _obj({"applied": _BOOL, "diff": _arr(_ref("diff_entry"))}),
        _obj({"plan": _arr(_ref("diff_entry")), "would_apply": _BOOL,
              "refused": _arr(_ref("diff_entry"))})]},
    "history": _arr(_obj({"seq": _INT, "kind": _STR, "diff": _arr(_ref("diff_entry"))})),
    "stop": _obj({"summary": _obj({"status": _STR, "exits": _ref("exits"),
                                   "registers": _ref("registers")})}),
    "inject": _obj({"queued": _STR, "instructions": _INT}),
    "demo": _obj({p: _obj({"instructions": _INT, "exits": _ref("exits")})
                  for p in ("phase1", "phase2")}),
    "caps-import": {"allOf": [_ref("caps_set"), _obj({"output": _OPT_STR})]},
    "edit": _obj({"profile": _STR, "changed": _BOOL, "saved": _BOOL, "forced": _BOOL,
                  "valid": {"type": ["boolean", "null"]}, "action": _STR},
                 {"kept_copy": _OPT_STR, "errors": _arr({"type": "object"}),
                  "warnings": _arr({"type": "object"})}),
    "guest-list": _arr(_obj({"name": _STR, "image": _STR, "source": _OPT_STR,
                             "profile": _OPT_STR})),
    "guest-build": _obj({"source": _STR, "output": _STR, "bytes": _INT, "origin": _INT,
                         "bits": {"enum": [16, 32, 64]},
                         "assembler": {"enum": ["nasm", "keystone"]}}),
    "trace-summary": _obj({"file": _STR, "exits": _INT, "records": _INT, "sample": _INT,
                           "counts_exact": _BOOL, "host_ns": _INT,
                           "reasons": _arr(_obj({
                               "reason": _INT, "name": _STR, "count": _INT, "host_ns": _INT,
                               "share": _NUM, "median_ns": _INT, "p99_ns": _INT,
                               "top_rips": _arr(_obj({"rip": _INT, "count": _INT,
                                                      "disassembly": _OPT_STR}))}))}),
    "smoke-merge": _obj({"files": _INT, "suites": _INT, "tests": _INT, "failures": _INT,
                         "errors": _INT, "skipped": _INT, "passed": _INT, "ok": _BOOL},
                        {"time": _NUM, "output": _OPT_STR}),
    "smoke": _obj({"smoke_file": _STR, "summary": _obj({"total": _INT, "ok": _BOOL}),
                   "cases": _arr(_obj({"id": _STR, "outcome": _STR, "exits": _ref("exits")}))}),
}


def schema(report: str) -> dict:
    """The full JSON Schema (with its $defs) of one report."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": BASE + report, "title": f"vmcfg {report} --json", **REPORTS[report],
            "$defs": DEFS}
