"""`compress release`: a CI gate for model releases.

A validated `compress.toml` (config.py) drives prune -> fine-tune -> export -> verify -> measure per target
(pipeline.py), each step a `compress` verb run as a subprocess and cached by the hash of its inputs
(cache.py); budgets are checked and written as report.json, report.md, JUnit XML and plots (report.py).
"""
