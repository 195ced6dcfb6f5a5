"""Decision rules fitted on out-of-fold predictions: from scores to the submitted values where the metric depends
on them. A threshold for a 0/1 label (F1, accuracy), one threshold per label (F-beta per image, micro or macro F1),
cut-points between grades (quadratic weighted kappa). Classes (argmax) and metrics of the scores themselves (AUC,
log loss, RMSE) have none.

A rule is a monotone transform of the scores after which the task's default decision (kit.task.decide: 0.5,
rounding) gives the fitted one, so every consumer applies it the same way, before anything else:

    rule = fit_decision(task, y_oof, p_oof)        # None where nothing is fitted
    p = apply_decision(rule, p_test)               # kit submit, kit predict, kit.load(...).predict, bundles

    thresholds t_k   p -> sigmoid(logit(p) - logit(t_k))     (p = t_k lands on 0.5: decided 1)
    cuts c_1 < ...   v -> the piecewise-linear map sending c_k to low + k - 0.5, slope 1 outside

It is judged like every automatic choice (kit.choice): fitted on all out-of-fold rows but one part and applied
to that part (nested, 5 parts), kept only when it beats the default rule by more than kit.choice.NOISE_SE paired
standard errors; the run's report (kit.report) stores it with the reason. numpy only.
"""
from __future__ import annotations

import numpy as np

from kit import metrics as M
from kit.task import DECIDED_METRICS, Task

NESTED_PARTS = 5  # parts of the out-of-fold rows for the nested estimate of a fitted rule
GRID = np.linspace(0.02, 0.98, 49)  # thresholds tried per label
PASSES = 2  # coordinate-ascent passes over the labels / cut-points
EPS = 1e-6


def fits(task: Task) -> bool:
    """Whether this task's metric depends on a rule that can be fitted (and task.decision asks for it)."""
    return task.decision == "fit" and task.metric in DECIDED_METRICS and task.rule is not None


def apply_decision(rule: dict | None, scores: np.ndarray) -> np.ndarray:
    """`scores` transformed by a fitted rule (identity for None), float32 like every saved prediction."""
    p = np.asarray(scores, dtype=np.float64)
    if rule is None:
        return p.astype(np.float32)
    if rule["kind"] == "thresholds":
        t = np.clip(np.asarray(rule["values"], dtype=np.float64), EPS, 1 - EPS)
        q = np.clip(p, EPS, 1 - EPS)
        z = np.log(q / (1 - q)) - np.log(t / (1 - t))
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    if rule["kind"] == "cuts":
        return _map_cuts(p[:, 0], np.asarray(rule["values"], dtype=np.float64), float(rule["low"]))[:, None] \
            .astype(np.float32)
    raise ValueError(f"unknown decision rule {rule.get('kind')!r}: 'thresholds' or 'cuts'")


def _map_cuts(v: np.ndarray, cuts: np.ndarray, low: float) -> np.ndarray:
    """The monotone map with cuts[k] -> low + k + 0.5 (k = 0..), linear between cut-points, slope 1 outside."""
    anchors = low + np.arange(len(cuts)) + 0.5
    out = np.interp(v, cuts, anchors)
    out = np.where(v < cuts[0], anchors[0] + (v - cuts[0]), out)
    return np.where(v > cuts[-1], anchors[-1] + (v - cuts[-1]), out)


def _score(task: Task, y, p) -> float:
    return M.score(task.metric, y, p)


def fit_rule(task: Task, y: np.ndarray, p: np.ndarray) -> dict:
    """The rule maximising the task's metric on (y, p) by coordinate ascent from the default rule: each threshold
    over GRID; each cut-point over 21 places between its neighbours (one grade beyond, at the ends)."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if task.rule == "cuts":
        low, high = int(task.low), int(task.high)

        def between(k, cuts):
            lo = cuts[k - 1] + 1e-3 if k > 0 else cuts[k] - 1.0
            hi = cuts[k + 1] - 1e-3 if k + 1 < len(cuts) else cuts[k] + 1.0
            return np.linspace(lo, hi, 21)
        return _ascend(task, y, p, {"kind": "cuts", "values": (np.arange(low, high) + 0.5).tolist(), "low": low},
                       between)
    return _ascend(task, y, p, {"kind": "thresholds", "values": [0.5] * p.shape[1]}, lambda k, t: GRID)


def _ascend(task: Task, y, p, rule: dict, candidates) -> dict:
    """Coordinate ascent on rule["values"]: PASSES passes, each value k tried at candidates(k, values), a change
    kept where the metric strictly improves."""
    sign = 1.0 if M.get_metric(task.metric).higher_is_better else -1.0
    values = np.asarray(rule["values"], dtype=np.float64)
    if len(values) == 0:
        return rule
    best = sign * _score(task, y, apply_decision(rule, p))
    for _ in range(PASSES):
        for k in range(len(values)):
            for c in candidates(k, values):
                trial = values.copy()
                trial[k] = c
                s = sign * _score(task, y, apply_decision({**rule, "values": trial.tolist()}, p))
                if s > best + 1e-12:
                    best, values = s, trial
    return {**rule, "values": [float(v) for v in values]}


def nested_rows(task: Task, y: np.ndarray, p: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each row's scores transformed by a rule fitted on the other parts (NESTED_PARTS, seeded)."""
    n = len(y)
    part = np.random.default_rng(seed).permutation(n) % NESTED_PARTS
    out = np.empty(p.shape, dtype=np.float32)
    for k in range(NESTED_PARTS):
        test = part == k
        if not test.any():
            continue
        out[test] = apply_decision(fit_rule(task, y[~test], p[~test]), p[test])
    return out


def fit_decision(task: Task, y, p, seed: int = 0) -> dict | None:
    """The rule to submit with: fitted on every out-of-fold row, when its nested estimate beats the default rule
    by kit.choice's margin; None (the default rule) otherwise, or where the metric has no rule. The returned dict
    also says why (`why`) and the scores (`default`, `nested`, on the task's metric)."""
    from kit.choice import choose
    if not fits(task) or len(y) < 2 * NESTED_PARTS:
        return None
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    nested = nested_rows(task, y, p, seed)
    choice = choose({"default": p, "fitted": nested}, y, task.metric, "default", what="decision rule")
    rule = fit_rule(task, y, p)
    rule.update(why=choice.why, default=M.score(task.metric, y, p), nested=M.score(task.metric, y, nested),
                kept=choice.name == "fitted")
    return rule


def rule_in_use(rule: dict | None) -> dict | None:
    """The rule a report stores, if it is to be applied (kept by the nested comparison), else None."""
    return rule if rule and rule.get("kept") else None
