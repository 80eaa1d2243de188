"""Reliability harness: a generated bad-input corpus, kill -9 fault injection and a loopback load test.

Used by ``tests/test_reliability_*.py`` (small, fast versions in CI) and by
``scripts/measure_reliability.py`` (the full runs whose figures RELIABILITY.md reports).
"""
