"""Speed and memory benchmarks (``python benchmarks/NAME.py``).

Results go to benchmarks/results/, tables to BENCHMARKS.md (``benchmarks/report.py``).
"""
