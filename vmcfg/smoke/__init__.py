"""CI smoke runs: a smoke file (TOML) lists cases -- profile x guest x launch options
with expectations -- that `vmcfg smoke` runs in parallel `vmcfg launch` processes,
reporting a summary table, JUnit XML and the artefacts of failing cases.

    model.py   cases, expectations, count bounds
    loader.py  reading a smoke file (file:line:col errors), matrix expansion
    select.py  -k expressions
    expect.py  checking a launch result against expectations
    runner.py  worker processes, timeouts, the results folder
    report.py  progress, summary table, closing line
    junit.py   JUnit XML
"""

from .loader import load_smoke
from .model import Bound, Case, Expect, SmokeFileError, Suite

__all__ = ["Bound", "Case", "Expect", "SmokeFileError", "Suite", "load_smoke"]
