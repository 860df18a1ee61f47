"""vmcfg edit driven by a scripted $EDITOR: save, re-edit, discard, force, conflicts."""

import json

import jsonschema
import os
import sys
import textwrap

import pytest

ORIGINAL = textwrap.dedent("""\
    # edited by tests
    [profile]
    extends = "baseline"

    [primary]
    hlt_exiting = true   # keep this comment
    """)

# The editor: on its N-th run it applies step N of a script (a JSON list in $EDIT_STEPS):
#   {"append": TEXT}        append TEXT to the file it was given
#   {"replace": [A, B]}     replace A by B
#   {"also_write": [PATH, TEXT]}  write TEXT to another file (simulates a concurrent change)
#   {"exit": N}             exit with status N
# and records the path it was given in $EDIT_LOG.
EDITOR = textwrap.dedent("""\
    import json, os, sys
    path = sys.argv[-1]
    state = os.environ["EDIT_STATE"]
    n = int(open(state).read()) if os.path.exists(state) else 0
    open(state, "w").write(str(n + 1))
    with open(os.environ["EDIT_LOG"], "a") as log:
        log.write(path + "\\n")
    steps = json.loads(os.environ["EDIT_STEPS"])
    step = steps[min(n, len(steps) - 1)]
    text = open(path).read()
    if "append" in step:
        text += step["append"]
    if "replace" in step:
        text = text.replace(*step["replace"])
    open(path, "w").write(text)
    if "also_write" in step:
        open(step["also_write"][0], "w").write(step["also_write"][1])
    sys.exit(step.get("exit", 0))
    """)


@pytest.fixture
def edit(cli, tmp_path, monkeypatch):
    import tempfile
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # kept copies land here
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    prof = tmp_path / "prof.toml"
    prof.write_text(ORIGINAL)

    def run(steps, *args, input=None, use_visual=False):
        state = tmp_path / "state"
        if state.exists():
            state.unlink()
        env = {"EDIT_STEPS": json.dumps(steps), "EDIT_STATE": str(state),
               "EDIT_LOG": str(tmp_path / "log")}
        cmd = f"{sys.executable} {script}"
        env.update({"VISUAL": cmd, "EDITOR": "false"} if use_visual
                   else {"VISUAL": None, "EDITOR": cmd})
        r = cli("edit", str(prof), *args, input=input, env=env)
        runs = int(state.read_text()) if state.exists() else 0
        return r, runs
    run.prof = prof
    run.log = tmp_path / "log"
    return run


VALID = {"append": "\n[pin]\nnmi_exiting = true\n"}
INVALID = {"append": "\n[pin]\nvirtual_nmis = true\n"}            # E19: needs nmi_exiting
FIX = {"replace": ["virtual_nmis = true\n", "virtual_nmis = true\nnmi_exiting = true\n"]}


def test_valid_edit_is_saved_on_a_toml_copy(edit):
    r, runs = edit([VALID])
    assert r.exit_code == 0, r.output
    assert runs == 1
    assert edit.prof.read_text() == ORIGINAL + VALID["append"]
    copy = edit.log.read_text().strip()
    assert copy.endswith(".toml") and copy != str(edit.prof)
    assert not os.path.exists(copy)                    # the copy is cleaned up
    assert "saved" in r.stderr


def test_visual_wins_over_editor(edit):
    r, runs = edit([VALID], use_visual=True)
    assert r.exit_code == 0 and runs == 1


def test_no_change(edit):
    r, runs = edit([{"append": ""}])
    assert r.exit_code == 0 and "no changes" in r.stderr
    assert edit.prof.read_text() == ORIGINAL


def test_invalid_then_reedit_then_save(edit):
    r, runs = edit([INVALID, FIX], input="e\n")
    assert r.exit_code == 0, r.output
    assert runs == 2
    assert "error[E19]" in r.stderr
    assert "prof.toml:9:1" in r.stderr                 # line numbers of the edited text
    text = edit.prof.read_text()
    assert "virtual_nmis = true\nnmi_exiting = true\n" in text


def test_invalid_then_discard(edit):
    r, runs = edit([INVALID], input="d\n")
    assert r.exit_code == 1
    assert runs == 1
    assert edit.prof.read_text() == ORIGINAL
    assert "discarded" in r.stderr
    copy = edit.log.read_text().strip()
    assert not os.path.exists(copy)                    # explicit discard: copy removed


def test_invalid_then_force(edit):
    r, runs = edit([INVALID], input="f\n")
    assert r.exit_code == 0
    assert edit.prof.read_text() == ORIGINAL + INVALID["append"]
    assert "INVALID" in r.stderr


def test_invalid_reedit_twice_then_force(edit):
    r, runs = edit([INVALID, {"append": "# still broken\n"}, {"append": ""}], input="e\ne\nf\n")
    assert r.exit_code == 0 and runs == 3
    assert edit.prof.read_text().endswith("# still broken\n")


def test_no_answer_discards_but_keeps_the_copy(edit):
    r, runs = edit([INVALID], input="")                # stdin at EOF: a script without a terminal
    assert r.exit_code == 1
    assert edit.prof.read_text() == ORIGINAL
    copy = edit.log.read_text().strip()
    assert os.path.exists(copy) and "virtual_nmis" in open(copy).read()
    assert copy in r.stderr


def test_no_input_and_force_flags(edit):
    r, _ = edit([INVALID], "--no-input")
    assert r.exit_code == 1 and edit.prof.read_text() == ORIGINAL
    r, _ = edit([INVALID], "--no-input", "--force")
    assert r.exit_code == 0 and edit.prof.read_text() == ORIGINAL + INVALID["append"]


def test_editor_failure_leaves_profile_alone(edit):
    r, _ = edit([{"append": "junk = \n", "exit": 3}])
    assert r.exit_code == 1 and "status 3" in r.stderr
    assert edit.prof.read_text() == ORIGINAL


def test_unparsable_edit_is_an_error_not_a_traceback(edit):
    r, runs = edit([{"append": "[broken\n"}, {"replace": ["[broken\n", ""]}], input="e\n")
    assert r.exit_code == 0 and runs == 2
    assert "invalid TOML" in r.stderr
    assert edit.prof.read_text() == ORIGINAL


def test_concurrent_change_is_not_overwritten_without_confirmation(edit):
    other = ORIGINAL.replace("hlt_exiting = true", "hlt_exiting = false")
    step = {**VALID, "also_write": [str(edit.prof), other]}
    r, _ = edit([step], "--no-input")
    assert r.exit_code == 1 and "changed on disk" in r.stderr
    assert edit.prof.read_text() == other             # the other change survives
    r, _ = edit([{**VALID, "also_write": [str(edit.prof), other + "# x\n"]}], input="n\n")
    assert r.exit_code == 1 and edit.prof.read_text() == other + "# x\n"
    r, _ = edit([{**VALID, "also_write": [str(edit.prof), other]}], input="y\n")
    assert r.exit_code == 0
    assert edit.prof.read_text().endswith(VALID["append"])


def test_concurrent_change_overwritten_with_yes(edit):
    other = ORIGINAL + "# other\n"
    r, _ = edit([{**VALID, "also_write": [str(edit.prof), other]}], "--yes", "--no-input")
    assert r.exit_code == 0
    assert "nmi_exiting = true" in edit.prof.read_text()


def test_json_result(edit):
    r, _ = edit([INVALID], "--no-input", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1
    assert doc["action"] == "discarded" and doc["valid"] is False and not doc["saved"]
    assert doc["errors"][0]["rule"] == "E19" and doc["kept_copy"]
    from vmcfg.report_schemas import schema
    jsonschema.validate(doc, schema("edit"))
    r, _ = edit([VALID], "--json")
    doc = json.loads(r.stdout)
    assert doc["saved"] and doc["valid"] and doc["action"] == "saved"
    from vmcfg.report_schemas import schema
    jsonschema.validate(doc, schema("edit"))


def test_edit_bad_usage(cli, tmp_path):
    r = cli("edit", str(tmp_path / "nope.toml"), env={"EDITOR": "true"})
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = cli("edit", "baseline", env={"EDITOR": "true"})
    assert r.exit_code == 2 and "built-in" in r.stderr
    p = tmp_path / "p.toml"
    p.write_text(ORIGINAL)
    r = cli("edit", str(p), env={"EDITOR": "/nonexistent/editor", "VISUAL": None})
    assert r.exit_code == 2 and "cannot run the editor" in r.stderr
    assert p.read_text() == ORIGINAL
