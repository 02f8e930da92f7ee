"""Summaries of repeated measurements: median with min, max and stddev."""

from __future__ import annotations

import statistics


def summarize(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "stddev": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stddev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }
