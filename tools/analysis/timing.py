"""Paired timing statistics for the benchmark tools on noisy machines.

On a shared machine step times drift by far more, within a minute, than the few percent the
benchmarks compare.  The tools therefore run their variants interleaved, round by round,
and compare each variant's step with the reference's step of the same round.

A module of the benchmark tools (``benchmark_label_path.py``, ``benchmark_downstream.py``),
imported as ``timing`` with this folder on ``sys.path`` (a script's own folder is); not part of
the ``tlalign_mm`` package.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

__all__ = ['paired_ratios']


def paired_ratios(times: Mapping[str, Sequence[float]], ref: str) -> dict[str, tuple[float, float, float]]:
    """Geometric mean of the round-by-round ratios ``t_variant / t_ref`` and its 95% interval.

    Args:
        times: variant -> step times in seconds, one per round; all lists as long as ``times[ref]``
            (round i of every variant was run in the same round).
        ref: the variant to divide by.

    Returns:
        variant -> ``(mean, low, high)``: ``exp(m)`` and ``exp(m -+ 1.96 s / sqrt(n))`` for the mean
        ``m`` and standard deviation ``s`` of the n log ratios (normal approximation; zero width
        for one round).  ``ref`` itself gives (1, 1, 1).

    Raises:
        KeyError: ``ref`` not in ``times``.
        ValueError: lists of different lengths, no rounds, or a time that is not positive.
    """
    base = list(times[ref])
    if not base:
        raise ValueError('paired_ratios: no rounds were timed')
    out = {}
    for v, ts in times.items():
        if len(ts) != len(base):
            raise ValueError(f'paired_ratios: {v!r} has {len(ts)} rounds, {ref!r} has {len(base)}')
        if min(ts) <= 0 or min(base) <= 0:
            raise ValueError(f'paired_ratios: step times must be positive (variant {v!r})')
        logs = [math.log(a / b) for a, b in zip(ts, base)]
        m = statistics.fmean(logs)
        half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
        out[v] = (math.exp(m), math.exp(m - half), math.exp(m + half))
    return out
