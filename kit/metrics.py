"""The metric table: name -> (function of (y_true, probs), higher_is_better), each row's term where the metric is
their mean. numpy only, scikit-learn's definitions (tests/test_tta_choice.py checks them against it); no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y_true int (n,), probs (n, C)) -> score
    higher_is_better: bool
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # each row's term, where fn is their mean


def _correct(y, p):
    return (np.argmax(p, axis=1) == y).astype(np.float64)


def _row_log_loss(y, p):
    """sklearn's log_loss row by row: probabilities clipped at 1e-15 and each row renormalised (float32 rows sum to
    1 only within ~1e-7)."""
    p = np.clip(p, 1e-15, 1.0)
    return -np.log(p[np.arange(len(y)), y] / p.sum(axis=1))


def _mean_of(rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, p: float(np.mean(rows(y, p)))


def _f1_macro(y, p):
    """sklearn's f1_score(average="macro", labels=every class, zero_division=0), from class counts: the paired
    bootstrap (paired_se) calls it hundreds of times, where sklearn's checks cost a millisecond a call."""
    c = p.shape[1]
    pred = np.argmax(p, axis=1)
    tp = np.bincount(y[pred == y], minlength=c)
    denom = np.bincount(pred, minlength=c) + np.bincount(y, minlength=c)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)))


METRICS = {
    "accuracy": Metric("accuracy", _mean_of(_correct), True, _correct),
    "log_loss": Metric("log_loss", _mean_of(_row_log_loss), False, _row_log_loss),
    "f1_macro": Metric("f1_macro", _f1_macro, True),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return METRICS[name]


def score(name: str, y_true, probs) -> float:
    return get_metric(name).fn(np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64))


def score_all(y_true, probs) -> dict:
    return {name: score(name, y_true, probs) for name in METRICS}


def better(name: str, a: float, b: float) -> bool:
    """True when score a is strictly better than b for this metric."""
    return a > b if get_metric(name).higher_is_better else a < b


def paired_se(name: str, y_true, probs_a, probs_b, *, n_boot: int = 200, seed: int = 0) -> float:
    """Standard error of score(a) - score(b) when a and b predict the same rows (their errors are correlated,
    so this is far smaller than either score's own): from the per-row differences for a metric that is a mean
    over rows (accuracy, log loss), else from a paired bootstrap of the rows (seeded: the same answer each time)."""
    y = np.asarray(y_true, dtype=np.int64)
    a, b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    n = len(y)
    if n < 2:
        return float("inf")
    m = get_metric(name)
    if m.rows is not None:
        d = m.rows(y, a) - m.rows(y, b)
        return float(np.std(d, ddof=1) / np.sqrt(n))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        diffs.append(m.fn(y[i], a[i]) - m.fn(y[i], b[i]))
    return float(np.std(diffs, ddof=1))
