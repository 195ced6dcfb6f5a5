"""The metric table: name -> (function of (y_true, scores), higher_is_better), each row's term where the metric is
their mean. numpy only, scikit-learn's definitions (tests/test_task_metrics.py and tests/test_tta_choice.py check
them against it); no torch.

Each function works the kind out of the shapes (the task contract): y 2-D -> multilabel (y and p (n, K) 0/1 and
probabilities); y 1-D and p several columns -> multiclass (softmax rows); p one column -> binary (P(y == 1)),
ordinal (a grade in grade units) or regression (a value). Default decisions: argmax; p >= 0.5; floor(p + 0.5) for
a grade. A shape a metric does not define raises ValueError naming the metric and the shapes.

    metric      multiclass         binary            multilabel                ordinal        regression  better
    accuracy    argmax == y        p >= 0.5 == y     exact match of the row    round == y     -           higher
    log_loss    cross-entropy      binary CE         mean per-label binary CE  -              -           lower
    f1_macro    macro F1           F1 of class 1     macro F1 over labels      -              -           higher
    f1_micro    = accuracy         F1 of class 1     micro F1                  -              -           higher
    f2_samples  -                  -                 mean F2 over images       -              -           higher
    roc_auc     mean one-vs-rest   AUC               mean AUC over labels      -              -           higher
    qwk         -                  -                 -                         quadratic kappa             higher
    rmse        -                  (any one column with numeric y)                                        lower
    mae         -                  (any one column with numeric y)                                        lower

(round = floor(p + 0.5), never np.rint: half-to-even would move the cut-points between grades.)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y_true (n,) or (n, K), scores (n, K)) -> score
    higher_is_better: bool
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # each row's term, where fn is their mean


# ---- shapes ------------------------------------------------------------------------------------------------------

def _kind(name: str, y, p) -> str:
    """'multilabel', 'multiclass' or 'column' (p one column: binary, ordinal or regression), after checking shapes."""
    y, p = np.asarray(y), np.asarray(p)
    if p.ndim != 2:
        raise ValueError(f"{name}: scores must be 2-D (n, K), got shape {p.shape}")
    if y.ndim == 2:
        if y.shape != p.shape:
            raise ValueError(f"{name}: multilabel targets {y.shape} and scores {p.shape} must have the same shape")
        return "multilabel"
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"{name}: targets of shape {y.shape} do not fit scores of shape {p.shape}")
    return "column" if p.shape[1] == 1 else "multiclass"


def _unsupported(name: str, y, p, defined: str) -> ValueError:
    return ValueError(f"{name} is not defined for targets of shape {np.shape(y)} and scores of shape {np.shape(p)}; "
                      f"it is defined for {defined}")


def _binary_y(name: str, y) -> None:
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} on one column of scores needs binary targets (0/1), got values "
                         f"{np.unique(y)[:6].tolist()}")


def _integral_y(name: str, y) -> None:
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.floor(y)):
        raise ValueError(f"{name} needs integer targets (classes or grades), got real values such as "
                         f"{y[y != np.floor(y)][:3].tolist()}; for real values use rmse or mae")


def _grade(p) -> np.ndarray:
    """Default decision of one column of scores: floor(p + 0.5); for probabilities of class 1 that is p >= 0.5."""
    return np.floor(p[:, 0] + 0.5)


# ---- accuracy, log loss ------------------------------------------------------------------------------------------

def _correct(y, p):
    kind = _kind("accuracy", y, p)
    if kind == "multilabel":  # sklearn's accuracy_score on indicator matrices: the whole row must match
        return ((p >= 0.5) == (y == 1)).all(axis=1).astype(np.float64)
    if kind == "multiclass":
        return (np.argmax(p, axis=1) == y).astype(np.float64)
    _integral_y("accuracy", y)
    return (_grade(p) == y).astype(np.float64)


def _row_log_loss(y, p):
    """sklearn's log_loss row by row, probabilities clipped at 1e-15. Multiclass: each row renormalised (float32 rows
    sum to 1 only within ~1e-7). Binary: -log P(y). Multilabel: the mean of the row's per-label binary terms, so the
    mean of rows is the mean over labels of sklearn's log_loss of each column."""
    kind = _kind("log_loss", y, p)
    if kind == "multiclass":
        p = np.clip(p, 1e-15, 1.0)
        return -np.log(p[np.arange(len(y)), y] / p.sum(axis=1))
    _binary_y("log_loss", y)
    q = np.clip(p, 1e-15, 1 - 1e-15)
    yy = y if kind == "multilabel" else y[:, None]
    return -np.mean(np.where(yy == 1, np.log(q), np.log1p(-q)), axis=1)


def _mean_of(rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, p: float(np.mean(rows(y, p)))


# ---- F scores ----------------------------------------------------------------------------------------------------
# From counts, not sklearn calls: the paired bootstrap (paired_se) calls them hundreds of times, where sklearn's
# checks cost a millisecond a call.

def _f(tp, fp, fn, beta: float = 1.0):
    """F-beta from counts, 0 where tp + fp + fn == 0 (sklearn's zero_division=0)."""
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, denom, out=np.zeros(np.shape(denom)), where=denom > 0)


def _f1_macro(y, p):
    """Multiclass: sklearn's f1_score(average="macro", labels=every class, zero_division=0). Multilabel: the same
    over labels, p >= 0.5. Binary: f1_score(y, p >= 0.5) (average="binary": the F1 of class 1)."""
    kind = _kind("f1_macro", y, p)
    if kind == "multiclass":
        c = p.shape[1]
        pred = np.argmax(p, axis=1)
        tp = np.bincount(y[pred == y], minlength=c)
        denom = np.bincount(pred, minlength=c) + np.bincount(y, minlength=c)
        return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)))
    _binary_y("f1_macro", y)
    pred, t = (p >= 0.5), (y == 1) if kind == "multilabel" else (y == 1)[:, None]
    return float(np.mean(_f((pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0))))


def _f1_micro(y, p):
    """Multilabel: sklearn's f1_score(average="micro", zero_division=0), p >= 0.5. Multiclass: equals accuracy
    (argmax). Binary: the F1 of class 1, as f1_macro."""
    kind = _kind("f1_micro", y, p)
    if kind == "multiclass":
        return float(np.mean(_correct(y, p)))
    if kind == "column":
        return _f1_macro(y, p)
    _binary_y("f1_micro", y)
    pred, t = p >= 0.5, y == 1
    return float(_f(np.sum(pred & t), np.sum(pred & ~t), np.sum(~pred & t)))


def fbeta_rows(y, p, beta: float = 2.0) -> np.ndarray:
    """Each image's F-beta between its true tags (y == 1) and its predicted tags (p >= 0.5), multilabel only.

    As Kaggle's Planet competition scores it (and ../shared/competitions/fashion_tasks.py f2_samples): an image with
    no true positive scores 0, also one with no true and no predicted tags. That is sklearn's
    fbeta_score(y, p >= 0.5, beta=beta, average="samples", zero_division=0); with zero_division=1 sklearn would
    score an image with neither true nor predicted tags 1 instead."""
    if _kind(f"f{beta:g}_samples", y, p) != "multilabel":
        raise _unsupported(f"f{beta:g}_samples", y, p, "multilabel targets (n, K) with scores (n, K)")
    pred, t = p >= 0.5, y == 1
    return _f((pred & t).sum(1), (pred & ~t).sum(1), (~pred & t).sum(1), beta)


def fbeta(y, p, beta: float = 2.0) -> float:
    """Mean over images of fbeta_rows (sklearn's fbeta_score(average="samples", zero_division=0))."""
    return float(np.mean(fbeta_rows(y, p, beta)))


# ---- ranks: ROC AUC ----------------------------------------------------------------------------------------------

def _auc(t: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney: the chance that a positive outscores a negative, a tie counting one half; equal to sklearn's
    roc_auc_score (the trapezoid under the ROC curve). nan when t holds one class only."""
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # ties share their mean rank
    return float((rankdata(s)[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _roc_auc(y, p):
    """Binary: sklearn's roc_auc_score(y, p[:, 0]). Multilabel: the mean AUC of the columns, as roc_auc_score(y, p,
    average="macro"), but a column whose targets hold one class only is skipped (sklearn raises there). Multiclass:
    the mean one-vs-rest AUC of each class's column against the one-hot of y, classes absent from y skipped; equal
    to roc_auc_score(y, p, multi_class="ovr", average="macro") where every class occurs. nan where no column has
    both classes."""
    kind = _kind("roc_auc", y, p)
    if kind == "multiclass":
        _integral_y("roc_auc", y)
        t = y[:, None] == np.arange(p.shape[1])
    else:
        _binary_y("roc_auc", y)
        t = (y == 1) if kind == "multilabel" else (y == 1)[:, None]
    aucs = [_auc(t[:, k], p[:, k]) for k in range(p.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


# ---- one column: grades and values -------------------------------------------------------------------------------

def _column(name: str, y, p, defined: str):
    if _kind(name, y, p) != "column":
        raise _unsupported(name, y, p, defined)
    return p[:, 0]


def _qwk(y, p):
    """sklearn's cohen_kappa_score(y, floor(p + 0.5), weights="quadratic"): labels are the union of the true and
    predicted grades, sorted, and the weight of a cell is the squared distance of the labels' *positions* in that
    list (as sklearn: grades 1, 2, 5 with no 3 or 4 make 2 and 5 neighbours). nan where the expected disagreement
    is 0 (one grade only)."""
    s = _column("qwk", y, p, "ordinal targets (n,) with one column of scores (n, 1)")
    _integral_y("qwk", y)
    pred = np.floor(s + 0.5)
    labels, idx = np.unique(np.concatenate([y.astype(np.float64), pred]), return_inverse=True)
    c, n = len(labels), len(y)
    confusion = np.bincount(idx[:n] * c + idx[n:], minlength=c * c).reshape(c, c).astype(np.float64)
    expected = np.outer(confusion.sum(1), confusion.sum(0)) / n
    w = (np.arange(c)[:, None] - np.arange(c)[None, :]) ** 2.0
    denom = float(np.sum(w * expected))
    return float("nan") if denom == 0 else float(1 - np.sum(w * confusion) / denom)


def _abs_errors(y, p):
    return np.abs(_column("mae", y, p, "numeric targets (n,) with one column of scores (n, 1)") - y)


def _rmse(y, p):
    s = _column("rmse", y, p, "numeric targets (n,) with one column of scores (n, 1)")
    return float(np.sqrt(np.mean((s - y) ** 2)))


METRICS = {
    "accuracy": Metric("accuracy", _mean_of(_correct), True, _correct),
    "log_loss": Metric("log_loss", _mean_of(_row_log_loss), False, _row_log_loss),
    "f1_macro": Metric("f1_macro", _f1_macro, True),
    "f1_micro": Metric("f1_micro", _f1_micro, True),
    "f2_samples": Metric("f2_samples", partial(fbeta, beta=2.0), True, partial(fbeta_rows, beta=2.0)),
    "roc_auc": Metric("roc_auc", _roc_auc, True),
    "qwk": Metric("qwk", _qwk, True),
    "rmse": Metric("rmse", _rmse, False),
    "mae": Metric("mae", _mean_of(_abs_errors), False, _abs_errors),
}
SCORE_ALL_DEFAULT = ("accuracy", "log_loss", "f1_macro")  # what score_all reports unless told (multiclass, binary)


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return METRICS[name]


def _targets(y_true) -> np.ndarray:
    """int64 where the targets are whole numbers (classes, 0/1, grades, tags), else float64 (real values)."""
    y = np.asarray(y_true)
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and not np.array_equal(y, np.floor(y)):
        return y.astype(np.float64)
    return y.astype(np.int64)


def _scores(probs) -> np.ndarray:
    return np.asarray(probs, dtype=np.float64)


def score(name: str, y_true, probs) -> float:
    return get_metric(name).fn(_targets(y_true), _scores(probs))


def score_all(y_true, probs, names=None) -> dict:
    """{name: score} for `names` (default SCORE_ALL_DEFAULT; pass the task's metrics for other kinds)."""
    return {name: score(name, y_true, probs) for name in (names or SCORE_ALL_DEFAULT)}


def better(name: str, a: float, b: float) -> bool:
    """True when score a is strictly better than b for this metric."""
    return a > b if get_metric(name).higher_is_better else a < b


def paired_se(name: str, y_true, probs_a, probs_b, *, n_boot: int = 200, seed: int = 0) -> float:
    """Standard error of score(a) - score(b) when a and b predict the same rows (their errors are correlated,
    so this is far smaller than either score's own): from the per-row differences for a metric that is a mean
    over rows (accuracy, log loss, f2_samples, mae), else from a paired bootstrap of the rows (seeded: the same
    answer each time; resamples where the metric is undefined, e.g. AUC on one class, are left out)."""
    y = _targets(y_true)
    a, b = _scores(probs_a), _scores(probs_b)
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
    diffs = np.asarray(diffs)
    diffs = diffs[np.isfinite(diffs)]
    return float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("inf")
