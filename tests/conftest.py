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


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with VMCFG_SLOW=1 or when selected with -m (e.g. -m slow)."""
    if os.environ.get("VMCFG_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow (minutes of guest time): set VMCFG_SLOW=1 or use -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
