"""The statistics of a benchmark: confidence intervals over seeds, ranks per data set, mean ranks across data
sets, and whether the best entry's lead is real (Friedman's test, then Nemenyi's critical difference, as Demšar
2006 recommends for comparing several methods over several data sets). numpy/scipy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` (one score per seed) with its Student t interval: mean +- t(1 - a/2, n - 1) s / sqrt(n).
    One value: no spread is known, the interval is the point (n = 1 says so)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, mean, mean, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


def ranks(scores: dict, higher_is_better: bool = True) -> dict:
    """Rank of each entry on one data set, 1 the best; ties share the mean of their ranks (all tie: all equal)."""
    names = list(scores)
    x = np.asarray([scores[n] for n in names], dtype=np.float64)
    r = stats.rankdata(-x if higher_is_better else x, method="average")
    return {n: float(v) for n, v in zip(names, r)}


def mean_ranks(table: dict, higher_is_better: bool = True) -> dict:
    """{entry: mean rank over data sets} of {data set: {entry: score}}; data sets lacking an entry are left out
    of the whole comparison (every data set ranks the same entries)."""
    entries = sorted(set.intersection(*(set(v) for v in table.values()))) if table else []
    per = [ranks({e: table[d][e] for e in entries}, higher_is_better) for d in table]
    return {e: float(np.mean([p[e] for p in per])) for e in entries}


@dataclass(frozen=True)
class Comparison:
    entries: list  # by mean rank, best first
    mean_rank: dict
    n_datasets: int
    friedman_stat: float | None  # None: fewer than 3 entries or 2 data sets
    friedman_p: float | None
    critical_difference: float  # Nemenyi, at alpha = 1 - CONFIDENCE
    lead_is_real: bool  # the best entry's mean rank is better than the second's by more than the CD, and p < alpha
    why: str


def nemenyi_cd(k: int, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """Nemenyi's critical difference of mean ranks for k entries over n data sets: q_alpha sqrt(k (k + 1) / (6 n)),
    q_alpha the studentized range quantile / sqrt(2) (Demšar 2006, Table 5: 1.960 for k = 2, 2.343 for 3)."""
    if k < 2 or n < 1:
        return float("nan")
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def compare(table: dict, higher_is_better: bool = True, alpha: float = 1 - CONFIDENCE) -> Comparison:
    """Whether the best entry over data sets is better than the rest by more than chance: Friedman's chi-square
    over the data sets' ranks (scipy.stats.friedmanchisquare; 3 entries or more), then the best entry against the
    runner-up by Nemenyi's critical difference of mean ranks."""
    mr = mean_ranks(table, higher_is_better)
    order = sorted(mr, key=lambda e: (mr[e], e))
    n, k = len(table), len(order)
    cd = nemenyi_cd(k, n, alpha)
    stat = p = None
    if k >= 3 and n >= 2:
        rows = [[table[d][e] for d in table] for e in order]
        if np.ptp(np.asarray(rows), axis=0).max() == 0:  # every data set a tie: no evidence of any difference
            stat, p = 0.0, 1.0
        else:
            res = stats.friedmanchisquare(*rows)
            stat, p = float(res.statistic), float(res.pvalue)
    if k < 2:
        return Comparison(order, mr, n, stat, p, cd, False, "one entry: nothing to compare")
    gap = mr[order[1]] - mr[order[0]]
    real = gap > cd and (p is None or p < alpha)
    test = (f"Friedman chi2 {stat:.2f}, p {p:.3g} over {n} data sets; " if p is not None else
            f"Friedman's test needs 3 entries and 2 data sets (here {k} and {n}); ")
    why = (test + f"{order[0]} leads {order[1]} by {gap:.2f} mean ranks, "
           + ("more" if gap > cd else "less") + f" than Nemenyi's critical difference {cd:.2f} (alpha {alpha:g}): "
           + ("a real lead" if real else "not shown to be real: more data sets or seeds would tell"))
    return Comparison(order, mr, n, stat, p, cd, real, why)
