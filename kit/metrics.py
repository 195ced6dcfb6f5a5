"""The metric table: name -> (function of (y_true, probs), higher_is_better). scikit-learn underneath; no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y_true int (n,), probs (n, C)) -> score
    higher_is_better: bool


def _accuracy(y, p):
    return float(np.mean(np.argmax(p, axis=1) == y))


def _log_loss(y, p):
    from sklearn.metrics import log_loss
    p = np.clip(p, 1e-15, 1.0)
    p = p / p.sum(axis=1, keepdims=True)  # float32 rows sum to 1 only within ~1e-7: sklearn warns
    return float(log_loss(y, p, labels=np.arange(p.shape[1])))


def _f1_macro(y, p):
    from sklearn.metrics import f1_score
    return float(f1_score(y, np.argmax(p, axis=1), average="macro", labels=np.arange(p.shape[1]), zero_division=0))


METRICS = {
    "accuracy": Metric("accuracy", _accuracy, True),
    "log_loss": Metric("log_loss", _log_loss, False),
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
