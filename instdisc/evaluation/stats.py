"""Latency statistics, in one place: the app's bench, the load test, the benchmarks and the evaluation report.

``percentile`` is linear interpolation between order statistics (numpy's default), and every
summary has the same keys, so a p99 means the same thing in every results file.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100, numpy's default method); nan for no values."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float] = (), *, ms: Sequence[float] | None = None, digits: int | None = 3
                    ) -> dict[str, float]:
    """``{n, p50_ms, p90_ms, p99_ms, mean_ms, max_ms}`` of per-call times given in seconds (or ``ms=``).

    ``digits``: rounding of the milliseconds (None: unrounded)."""
    t = [1000.0 * s for s in seconds] if ms is None else [float(x) for x in ms]
    if not t:
        nan = float("nan")
        return {"n": 0, "p50_ms": nan, "p90_ms": nan, "p99_ms": nan, "mean_ms": nan, "max_ms": nan}

    def r(x: float) -> float:
        return round(x, digits) if digits is not None else float(x)

    return {"n": len(t), "p50_ms": r(percentile(t, 50)), "p90_ms": r(percentile(t, 90)),
            "p99_ms": r(percentile(t, 99)), "mean_ms": r(statistics.fmean(t)), "max_ms": r(max(t))}
