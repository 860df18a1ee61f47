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


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with VMCFG_SLOW=1 or when selected with -m (e.g. -m slow)."""
    if os.environ.get("VMCFG_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow (minutes of guest time): set VMCFG_SLOW=1 or use -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
