"""Interleaved pairs of runs (harborctl, then its reference) judged by their medians: one
run of either path varies by a quarter on this machine (bench_upgrade's manual reference
18.8-24.7 s, bench_install's bare path on 8 hosts 38.3-48.5 s)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence


def medians(pairs: Sequence[tuple[float, float]]) -> tuple[float, float, float, list[float]]:
    """(harborctl's median, the reference's median, the median ratio, each pair's ratio)."""
    ratios = [ours / ref if ref else float("inf") for ours, ref in pairs]
    return (statistics.median(o for o, _ in pairs), statistics.median(r for _, r in pairs),
            statistics.median(ratios), ratios)


def run_count(text: str) -> int:
    """``--runs``: a number of pairs from 1 to 9 (argparse's ``type``)."""
    if not text.isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pairs from 1 to 9")
    return int(text)
