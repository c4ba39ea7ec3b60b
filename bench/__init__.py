"""Benchmark harness: the ensemble against its peers, side by side, under a real load generator.

`make bench` (or `.venv/bin/python -m bench.run`) runs everything; see BENCHMARKS.md.
"""
