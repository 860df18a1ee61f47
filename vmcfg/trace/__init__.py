"""Reading and presenting `vmcfg launch --trace` files (issue 17).

reader   TraceReader: exit records one at a time from plain or gzip JSON lines
sketch   bounded-memory quantiles (LogHistogram) and top keys (TopCounter)
summary  per-reason counts, host time, median/p99, top RIPs
export   Chrome Trace Event JSON for ui.perfetto.dev / chrome://tracing
rates    per-reason exit rates over time and their text charts (stats -f, demo)
"""
