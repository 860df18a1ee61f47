import os
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
ROOT = os.path.dirname(HERE)


@pytest.fixture
def write_profile(tmp_path):
    """write_profile(text, name="p.toml") -> path (text is dedented)."""
    def _w(text: str, name: str = "p.toml") -> str:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return str(p)
    return _w


@pytest.fixture
def cli():
    """Run the vmcfg CLI in-process: cli(*args) -> Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner
    from vmcfg.cli.main import cli as group

    def _run(*args, input=None, env=None):
        runner = CliRunner()
        return runner.invoke(group, list(args), input=input, env=env, catch_exceptions=False)
    return _run


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    """A private $XDG_RUNTIME_DIR, so named guests of a test never meet the user's."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


# Run a command as a terminal's foreground job would: SIGINT and SIGTERM at their
# defaults.  A background job of a non-interactive shell (`pytest &` in a script, some CI
# runners) starts with SIGINT ignored, and an ignored signal stays ignored across exec --
# vmcfg, like every POSIX program, leaves it so.  Tests that send signals must not depend
# on how pytest itself was started.
FOREGROUND = [sys.executable, "-c",
              "import os, signal, sys\n"
              "for s in (signal.SIGINT, signal.SIGTERM):\n"
              "    signal.signal(s, signal.SIG_DFL)\n"
              "os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"]

# How long a test waits for an event before it calls the program hung.  Never a measure of
# speed (bench/ measures that): it only has to be far longer than the slowest honest
# wait on a 2-core machine running several test suites at once.
PATIENCE = 120.0


def wait_until(pred, what: str, timeout: float = PATIENCE, step: float = 0.02):
    """Poll pred() until it returns a true value (returned); fail after `timeout` s."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(step)


def read_until(stream, needle: str, what: str | None = None) -> list[str]:
    """Read lines from a child's pipe until one contains needle (the lines so far).
    Blocks on the pipe itself: an event, not a timer.  EOF first fails the test."""
    lines = []
    while True:
        line = stream.readline()
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if not line:
            raise AssertionError(f"the program ended before {what or needle!r}:\n"
                                 + "".join(lines))
        lines.append(line)
        if needle in line:
            return lines


# The tests that take many seconds, longest first.  They are started before the others, and
# pyproject's `--maxschedchunk=1` hands pytest-xdist's workers one test at a time, so a
# parallel run (-n auto) never ends with one worker alone on a long test it picked up last.
# A test missing here (or renamed) only loses its place; nothing fails.
LONG_FIRST = (
    "test_trace.py::test_many_exits_export_and_summarise_in_bounded_memory",
    "test_live_vmm.py::test_soak_many_applies_exact_exit_counts",
    "test_smoke_launch.py::test_example_smoke_file_passes",
    "test_property.py::test_random_documents_never_crash",
    "test_vmm_engine.py::test_retired_count_matches_guest_arithmetic",
    "test_authoring_set.py::test_twenty_concurrent_set_processes_lose_nothing",
    "test_live_channel.py::test_ps_apply_history_rollback_stop",
    "test_trace_live.py::test_demo_draws_the_rate_chart_before_and_after_the_apply",
    "test_vmm_events.py::test_mov_ss_blocks_interrupts_for_one_instruction",
    "test_vmm_engine.py::test_data_on_a_code_page_still_counts_exactly",
    "test_live_channel.py::test_refusals_leave_guest_unchanged",
    "test_live_vmm.py::test_launch_detach_apply_stop",
    "test_live_vmm.py::test_two_guests_independent",
    "test_smoke_launch.py::test_failing_runaway_and_invalid_cases_do_not_disturb_the_others",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(it.nodeid.rsplit("/", 1)[-1].split("[")[0], len(rank)))
