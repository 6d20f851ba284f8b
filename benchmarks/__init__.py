"""Benchmark scripts (their output goes into BENCHMARKS.md) and their shared helpers (common.py)."""
