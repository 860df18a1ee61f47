"""Property-based: random TOML documents and random raw control values never
escape as a traceback, and every invalid raw value is reported by a rule."""

import string

from hypothesis import HealthCheck, given, settings, strategies as st

from vmcfg.profile import ProfileError, resolve_profile
from vmcfg.profile.loader import from_document
from vmcfg.profile.source import parse_toml
from vmcfg.vmx.models import MODEL_NAMES, get_model
from vmcfg.vmx.settings import SETTINGS
from vmcfg.vmx.table import CONTROLS, FIELDS

KEYS = [c.key for c in CONTROLS] + [s.key for s in SETTINGS] + ["name", "extends", "bogus", "x-y"]
TABLES = [f.key for f in FIELDS] + sorted({s.table for s in SETTINGS}) + ["raw", "profile", "junk"]

scalar = st.one_of(st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
                   st.text(alphabet=string.printable, max_size=12),
                   st.lists(st.one_of(st.integers(-5, 70000), st.text(max_size=8)), max_size=4))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


documents = st.lists(
    st.tuples(st.sampled_from(TABLES),
              st.lists(st.tuples(st.sampled_from(KEYS), scalar), max_size=4, unique_by=lambda kv: kv[0])),
    max_size=5, unique_by=lambda t: t[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.sampled_from(MODEL_NAMES))
def test_random_documents_never_crash(doc, cpu):
    text = "".join(f"[{t}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kvs) for t, kvs in doc)
    try:
        data, pos = parse_toml(text, "rand.toml")
        prof = from_document(data, pos, "rand.toml")
        if prof.extends:
            return                      # extends of random names: covered by unit tests
        r = resolve_profile(prof, get_model(cpu))
    except ProfileError as e:
        assert str(e).startswith("rand.toml")
        return
    for v in r.errors + r.warnings:
        assert v.rule and v.message and v.fix


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(MODEL_NAMES), st.sampled_from([f.key for f in FIELDS]),
       st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_random_raw_values_are_judged_by_a_rule(cpu, field, value):
    caps = get_model(cpu)
    text = f"[raw]\n{field} = {value}\n"
    data, pos = parse_toml(text, "raw.toml")
    r = resolve_profile(from_document(data, pos, "raw.toml"), caps)
    assert r.config.controls[field] == value           # taken exactly as written
    must, may = caps.allowed(field)
    f = [x for x in FIELDS if x.key == field][0]
    active = not f.activated_by or r.config.on(f.activated_by)
    violates = active and ((~value & must) or (value & ~may))
    cap_rule = {"pin": "E1", "primary": "E2", "secondary": "E3", "tertiary": "E4",
                "exit": "X1", "entry": "N1"}[field]
    reported = {v.rule for v in r.errors}
    if violates:
        assert cap_rule in reported
        assert not r.valid
    else:
        assert cap_rule not in reported
