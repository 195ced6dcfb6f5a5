"""Blend member predictions into one: mean, geometric mean, rank average, fitted weights, greedy selection.

numpy/scipy only (no torch), so a blend can be redone from saved predictions on any machine.
Every blend of class distributions returns rows that sum to 1 with no NaN; other scores (a task's 0/1 or label
probabilities, grades, values: kit.task, `simplex=False`) are blended as they are, and weights are fitted on the
task's own smooth loss (binary cross-entropy, squared error). Fitted methods are also scored by a nested
estimate (fit on all folds but one, score the held-out fold), because weights scored on the rows
they were fitted on look better than they will on the leaderboard.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special, stats

from kit.choice import Choice, choose
from kit.metrics import get_metric, score
from kit.predictions import Predictions
from kit.recipe import BLEND_METHODS
from kit.task import Task, multiclass

EPS = 1e-15  # the clip of kit.metrics' log loss; log(1e-15) = -34.5 bounds one row's loss
BLENDS = ("mean", "gmean", "rank", "weighted")  # how `blend` combines probabilities
METHODS = BLEND_METHODS  # what evaluate_methods compares, simplest first (kit.recipe: ensemble.methods)
FITTED = ("best", "weights", "greedy", "stack")  # methods fitted on the out-of-fold rows: scored nested too
_BLEND_OF = {"best": "weighted", "mean": "mean", "gmean": "gmean", "rank": "rank", "weights": "weighted",
             "greedy": "weighted", "stack": "stack"}
STACK_C = 1.0  # inverse L2 strength of the stacker; the log-probability features are on one scale (nats)


@dataclass(frozen=True)
class MethodResult:
    method: str
    weights: np.ndarray  # (n_members,), sums to 1; uniform for mean/gmean/rank
    oof_score: float  # blend fitted and scored on all oof rows: optimistic for fitted methods
    nested_score: float  # fitted on other folds, scored on held-out rows; equals oof_score when nothing is fitted
    params: dict | None = None  # stack: the second-level model {"coef": [C, M*C], "intercept": [C]}
    # the rows nested_score scored (held-out fits for fitted methods): what kit.choice compares, row by row
    nested_probs: np.ndarray | None = field(default=None, repr=False, compare=False)


# ---------------------------------------------------------------- checks

def check_aligned(preds: list[Predictions]) -> None:
    """Blending rows of different images, or columns of different classes, gives a plausible-looking wrong answer."""
    if not preds:
        raise ValueError("no member predictions to blend; pass at least one Predictions")
    ref = preds[0]
    for i, p in enumerate(preds[1:], start=1):
        if p.classes != ref.classes:
            raise ValueError(f"member {i} has classes {list(p.classes)} but member 0 has {list(ref.classes)}; "
                             "blend only members trained with the same class order")
        if len(p.ids) == len(ref.ids) and np.array_equal(p.ids, ref.ids):
            continue
        if len(p.ids) == len(ref.ids) and set(p.ids) == set(ref.ids):
            raise ValueError(f"member {i} has the ids of member 0 in a different order; "
                             f"align it with member.reorder(members[0].ids)")
        missing = sorted(set(ref.ids) - set(p.ids))[:3]
        extra = sorted(set(p.ids) - set(ref.ids))[:3]
        raise ValueError(f"member {i} has {len(p.ids)} ids, member 0 has {len(ref.ids)}; ids of member 0 missing "
                         f"from member {i}, e.g. {missing}; ids only in member {i}, e.g. {extra}. "
                         "Blend predictions of the same split")


def oof_labels(preds: list[Predictions]) -> np.ndarray:
    """The true labels carried by out-of-fold predictions; members must agree on them."""
    labelled = [(i, p.labels) for i, p in enumerate(preds) if p.labels is not None]
    if not labelled:
        raise ValueError("out-of-fold predictions carry no labels; save them with Predictions(..., labels=y)")
    i0, y = labelled[0]
    for i, labels in labelled[1:]:
        if not np.array_equal(labels, y):
            raise ValueError(f"member {i} has different labels from member {i0} on the same ids")
    return y


def _stack(probs_list) -> np.ndarray:
    if len(probs_list) == 0:
        raise ValueError("no member probabilities to blend")
    arrays = [np.asarray(p, dtype=np.float64) for p in probs_list]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != arrays[0].shape:
            raise ValueError(f"member {i} probabilities have shape {a.shape}, member 0 has {arrays[0].shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"member {i} probabilities contain NaN or inf")
    return np.stack(arrays)  # (members, rows, classes)


def _normalise_weights(weights, n_members: int, required: bool = False) -> np.ndarray:
    if weights is None:
        if required:
            raise ValueError("method 'weighted' needs weights; fit them with fit_weights or greedy_select")
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (n_members,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n_members} finite non-negative numbers with a positive sum, got {w}")
    return w / w.sum()


def _renormalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    s = p.sum(axis=1, keepdims=True)
    bad = ~np.isfinite(s[:, 0]) | (s[:, 0] <= 0)
    p = np.where(bad[:, None], 1.0, p)  # a row with no mass left becomes uniform rather than NaN
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- blends

def _ranks(P: np.ndarray) -> np.ndarray:
    """Per member and class column, rank over rows scaled to (0, 1]: rank / n_rows.

    Dividing by n (not n - 1) keeps the lowest row above 0, so no row of the blend is all zeros.
    """
    return stats.rankdata(P, axis=1) / P.shape[1]


def blend(probs_list, method: str, weights=None, simplex: bool = True) -> np.ndarray:
    """Combine member probabilities; `weights` (uniform when None) apply to every method.

    gmean: exp of the weighted mean log-probability, so one confident member cannot veto the others
    through a 0 (clipped to 1e-15). rank: mean of per-column ranks, renormalised; it ignores each
    member's calibration (any strictly increasing transform of a member's column gives the same blend),
    so its rows are usable as probabilities for argmax metrics but are poorly calibrated for log loss.
    """
    P = _stack(probs_list)
    w = _normalise_weights(weights, len(P), required=(method == "weighted"))
    if method in ("mean", "weighted"):
        out = np.tensordot(w, P, axes=1)
    elif method == "gmean":
        logp = np.tensordot(w, np.log(np.clip(P, EPS, 1.0)), axes=1)
        out = np.exp(logp - logp.max(axis=1, keepdims=True))  # shift so the largest entry is exp(0) = 1
    elif method == "rank":
        out = np.tensordot(w, _ranks(P), axes=1)
    else:
        raise ValueError(f"unknown blend method {method!r}; valid methods: {', '.join(BLENDS)}")
    return _renormalise(out) if simplex else out


def fit_weights(oof_probs_list, y, metric: str = "log_loss", loss: str = "cross_entropy") -> np.ndarray:
    """Non-negative weights summing to 1 for the weighted mean, minimising log loss on the oof rows.

    Log loss is minimised whatever `metric` is: it is smooth and, for a weighted mean of probabilities,
    convex in the weights, so SLSQP on the simplex finds the optimum. Accuracy and F1 are piecewise
    constant in the weights (zero gradient almost everywhere) and would leave the optimiser where it
    started. Use greedy_select to optimise such a metric directly. `loss` (kit.task.Task.score_loss):
    cross_entropy for class distributions; bce for 0/1 and label probabilities (binary cross-entropy over every
    cell); mse for grades and values (squared error, convex in the weights too).
    """
    get_metric(metric)  # an unknown name fails here, listing the valid ones
    P = _stack(oof_probs_list)
    n_members = len(P)
    if n_members == 1:
        return np.ones(1)
    if loss == "cross_entropy":
        y = np.asarray(y, dtype=np.int64)
        q = P[:, np.arange(len(y)), y]  # (members, rows): probability each member gives the true class

        def loss_and_grad(w):
            mix = np.maximum(w @ q, EPS)
            return -np.mean(np.log(mix)), -(q / mix).mean(axis=1)
    else:
        Y = np.asarray(y, dtype=np.float64).reshape(P.shape[1], -1)
        Q = P.reshape(n_members, -1)  # (members, cells)
        Yc = Y.reshape(-1)

        def loss_and_grad(w):
            mix = w @ Q
            if loss == "bce":
                m = np.clip(mix, EPS, 1 - EPS)
                d = -(Yc / m - (1 - Yc) / (1 - m))
                return -np.mean(Yc * np.log(m) + (1 - Yc) * np.log(1 - m)), (Q * d).mean(axis=1)
            r = mix - Yc
            return np.mean(r ** 2), 2 * (Q * r).mean(axis=1)

    res = optimize.minimize(
        loss_and_grad, np.full(n_members, 1.0 / n_members), jac=True, method="SLSQP",
        bounds=[(0.0, 1.0)] * n_members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-10, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if np.all(np.isfinite(w)) and w.sum() > 0 else np.full(n_members, 1.0 / n_members)


def _scorer(metric: str, simplex: bool = True):
    """(fn(y, probs) -> float, higher_is_better); numpy fast paths for class distributions because greedy calls it
    ~10^4 times."""
    m = get_metric(metric)
    if not simplex:
        return m.fn, m.higher_is_better
    if metric == "log_loss":
        return (lambda y, p: float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))), False
    if metric == "accuracy":
        return (lambda y, p: float(np.mean(np.argmax(p, axis=1) == y))), True
    return m.fn, m.higher_is_better


def _forward_select(P, y, scorer, n_iter: int, init_best: int) -> np.ndarray:
    """Counts of one greedy run: start from the init_best best single members, then add (with replacement)
    whichever member most improves the blend (a mean: of distributions, of probabilities, of values alike); keep
    the counts at the best step seen (ties: the earliest)."""
    fn, higher = scorer
    n_members = len(P)
    singles = np.array([fn(y, P[m]) for m in range(n_members)])
    order = np.argsort(-singles if higher else singles, kind="stable")
    counts = np.zeros(n_members, dtype=np.int64)
    counts[order[:max(1, min(init_best, n_members))]] = 1
    total = np.tensordot(counts, P, axes=1)
    best_counts, best = counts.copy(), fn(y, total / counts.sum())
    for _ in range(n_iter):
        k = counts.sum()
        cand = np.array([fn(y, (total + P[m]) / (k + 1)) for m in range(n_members)])
        m = int(np.argmax(cand) if higher else np.argmin(cand))  # ties: the lowest index, so runs are repeatable
        counts[m] += 1
        total += P[m]
        if (cand[m] > best) if higher else (cand[m] < best):
            best_counts, best = counts.copy(), cand[m]
    return best_counts


def greedy_select(oof_probs_list, y, metric: str = "log_loss", n_iter: int = 50, init_best: int = 1,
                  bagging: int = 20, bag_fraction: float = 0.5, seed: int = 0, simplex: bool = True) -> np.ndarray:
    """Caruana et al. (2004) ensemble selection, optimising `metric` itself; returns normalised counts.

    Refinements from the paper: sorted initialisation (start from the `init_best` best single members) and
    bagged selection (`bagging` runs, each over a random `bag_fraction` of the members, weights averaged),
    which keeps one lucky member from taking all the weight. A bag holds at least 2 members (a bag of one
    selects it unconditionally), so with 2 members bagging is skipped; with 3, each bag holds 2.
    """
    P = _stack(oof_probs_list)
    y = np.asarray(y)
    scorer = _scorer(metric, simplex)
    n_members = len(P)
    bag_size = min(n_members, max(2, int(np.ceil(bag_fraction * n_members))))
    if bagging <= 1 or bag_size >= n_members:
        counts = _forward_select(P, y, scorer, n_iter, init_best)
        return counts / counts.sum()
    rng = np.random.default_rng(seed)
    weights = np.zeros(n_members)
    for _ in range(bagging):
        members = np.sort(rng.choice(n_members, size=bag_size, replace=False))
        counts = _forward_select(P[members], y, scorer, n_iter, init_best)
        weights[members] += counts / counts.sum()
    return weights / weights.sum()


# ---------------------------------------------------------------- calibration

def _tempered_log(probs, T: float) -> np.ndarray:
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / T
    return z - special.logsumexp(z, axis=1, keepdims=True)


def temperature_scale(probs, y) -> float:
    """Temperature T minimising the log loss of p^(1/T) renormalised: T > 1 softens overconfident probabilities.

    Searched over T in [0.05, 20] on a log scale; fit it on out-of-fold probabilities, never on test.
    """
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(y))
    res = optimize.minimize_scalar(lambda log_t: -np.mean(_tempered_log(probs, np.exp(log_t))[rows, y]),
                                   bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                   options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply_temperature(probs, T: float) -> np.ndarray:
    if not (np.isfinite(T) and T > 0):
        raise ValueError(f"temperature must be a positive number, got T={T}")
    return np.exp(_tempered_log(probs, T))


# ---------------------------------------------------------------- honest comparison

def _stratified_halves(y: np.ndarray, seed: int) -> np.ndarray:
    """Fold 0/1 per row, each class split evenly; the running offset spreads odd class sizes over both halves.
    Several labels a row or real values: a seeded random half."""
    rng = np.random.default_rng(seed)
    if y.ndim != 1 or y.dtype.kind == "f":
        folds = np.zeros(len(y), dtype=np.int64)
        folds[rng.permutation(len(y))[: len(y) // 2]] = 1
        return folds
    folds = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = (np.arange(len(idx)) + offset) % 2
        offset += len(idx)
    return folds


def best_member(probs_list, y, metric: str, simplex: bool = True) -> np.ndarray:
    """One-hot weights of the single member that scores best on these rows (ties: the lowest index): "no blend",
    fitted like a blend so that its nested score pays for choosing the member on the same rows."""
    fn, higher = _scorer(metric, simplex)
    scores = np.array([fn(np.asarray(y), np.asarray(p, dtype=np.float64)) for p in probs_list])
    w = np.zeros(len(probs_list))
    w[int(np.argmax(scores) if higher else np.argmin(scores))] = 1.0
    return w


# ---------------------------------------------------------------- stacking

def _stack_features(probs_list) -> np.ndarray:
    """Members' log-probabilities side by side: (rows, members x classes), clipped at log(1e-15)."""
    P = _stack(probs_list)
    return np.log(np.clip(P, EPS, 1.0)).transpose(1, 0, 2).reshape(P.shape[1], -1)


def fit_stack(probs_list, y, c: float = STACK_C) -> dict:
    """A multinomial logistic regression on the members' out-of-fold log-probabilities (L2, inverse strength c):
    it can learn that one member is right on some classes and another on others, which no weighted mean can.
    Classes absent from `y` keep a logit of -1e4 (probability 0), as kit's logreg heads do."""
    from sklearn.linear_model import LogisticRegression
    y = np.asarray(y, dtype=np.int64)
    X = _stack_features(probs_list)
    n_classes = _stack(probs_list).shape[2]
    coef, intercept = np.zeros((n_classes, X.shape[1])), np.full(n_classes, -1e4)
    present = np.unique(y)
    if len(present) < 2:
        intercept[present] = 0.0
        return {"coef": coef.tolist(), "intercept": intercept.tolist()}
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        # members near-certain on most rows make the log-probabilities almost separable: lbfgs may stop at max_iter
        # (seen on the Fashion-MNIST development competition, printed as a page of advice in the middle of a run).
        # The fit it stops at is an early-stopped one; the nested score judges the stacker as it is fitted.
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(C=c, max_iter=2000).fit(X, y)
    if len(present) == 2:  # binary: P(second) = sigmoid(z) = softmax([0, z])[1]
        coef[present[1]], intercept[present] = lr.coef_[0], [0.0, lr.intercept_[0]]
    else:
        coef[present], intercept[present] = lr.coef_, lr.intercept_
    return {"coef": coef.tolist(), "intercept": intercept.tolist()}


def apply_stack(probs_list, params: dict) -> np.ndarray:
    z = _stack_features(probs_list) @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    return _renormalise(special.softmax(z, axis=1))


def _stack_weights(params: dict, n_members: int) -> np.ndarray:
    """How much each member weighs in a stacker, for display: its share of the coefficients' absolute sum."""
    coef = np.abs(np.asarray(params["coef"]))
    w = coef.reshape(coef.shape[0], n_members, -1).sum(axis=(0, 2))
    return w / w.sum() if w.sum() > 0 else np.full(n_members, 1.0 / n_members)


def _fit(method: str, probs_list, y, metric: str, seed: int, greedy_options: dict, task: Task) -> np.ndarray:
    if method == "best":
        return best_member(probs_list, y, metric, task.softmax)
    if method == "weights":
        return fit_weights(probs_list, y, metric, task.score_loss)
    if method == "greedy":
        return greedy_select(probs_list, y, metric, seed=seed, simplex=task.softmax, **greedy_options)
    return np.full(len(probs_list), 1.0 / len(probs_list))


def evaluate_methods(oof: list[Predictions], metric: str, folds=None, methods=METHODS, seed: int = 0,
                     greedy_options: dict | None = None, task: Task | None = None) -> dict[str, MethodResult]:
    """Score every method on out-of-fold predictions, with a nested score for the fitted ones. `task` (kit.task;
    default: classes, from the predictions) says what the scores are: the methods that do not blend it
    (Task.blends) are left out.

    `folds` gives each oof row's fold (from the member training); None means a single holdout, which is
    split into two stratified halves (seeded) for the nested estimate. Rows that sum to 1 are scored with
    kit.metrics, so numbers here match the leaderboard's.
    """
    check_aligned(oof)
    y = oof_labels(oof)
    get_metric(metric)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown ensemble methods {unknown}; valid methods: {', '.join(METHODS)}")
    task = task or multiclass(oof[0].classes, metric)
    methods = [m for m in methods if m in task.blends]
    folds = _stratified_halves(y, seed) if folds is None else np.asarray(folds)
    if folds.shape != y.shape[:1]:
        raise ValueError(f"folds must give one fold per oof row: shape {y.shape[:1]}, got {folds.shape}")
    if len(np.unique(folds)) < 2:
        raise ValueError("the nested score needs at least 2 folds; pass folds=None to split a holdout in halves")
    P = [p.probs for p in oof]
    greedy_options = dict(greedy_options or {})
    results = {}
    for method in methods:
        if method == "stack":
            results[method] = _evaluate_stack(P, y, metric, folds)
            continue
        w = _fit(method, P, y, metric, seed, greedy_options, task)
        probs = blend(P, _BLEND_OF[method], w, task.softmax)
        oof_score = score(metric, y, probs)
        nested_score, held_out = oof_score, probs
        if method in FITTED:
            held_out = np.empty(P[0].shape, dtype=np.float64)
            for f in np.unique(folds):
                test = folds == f
                wf = _fit(method, [p[~test] for p in P], y[~test], metric, seed, greedy_options, task)
                held_out[test] = blend([p[test] for p in P], "weighted", wf, task.softmax)
            nested_score = score(metric, y, held_out)
        results[method] = MethodResult(method, w, oof_score, nested_score, nested_probs=held_out)
    return results


def _evaluate_stack(P, y, metric: str, folds) -> MethodResult:
    """The stacker fitted on all rows (oof_score: in sample, optimistic) and, for the nested score, on all folds
    but one and applied to the held-out fold, as the first level was."""
    params = fit_stack(P, y)
    oof_score = score(metric, y, apply_stack(P, params))
    held_out = np.empty(P[0].shape, dtype=np.float64)
    for f in np.unique(folds):
        test = folds == f
        held_out[test] = apply_stack([p[test] for p in P], fit_stack([p[~test] for p in P], y[~test]))
    return MethodResult("stack", _stack_weights(params, len(P)), oof_score, score(metric, y, held_out), params,
                        nested_probs=held_out)


REFERENCE_METHOD = "mean"  # kit.choice's reference among blends: the plain average of the seeded members


def choose_method(results: dict[str, MethodResult], metric: str, y) -> Choice:
    """kit.choice's rule over the methods' nested rows: `mean` (else the first method listed) unless another
    method beats it by more than kit.choice.NOISE_SE paired standard errors of the nested score."""
    if not results:
        raise ValueError("no method results to choose from; run evaluate_methods first")
    missing = [n for n, r in results.items() if r.nested_probs is None]
    if missing:
        raise ValueError(f"methods {missing} carry no nested rows; score them with evaluate_methods")
    reference = REFERENCE_METHOD if REFERENCE_METHOD in results else next(iter(results))
    return choose({n: r.nested_probs for n, r in results.items()}, y, metric, reference, what="blend")


def apply_method(test_probs_list, result: MethodResult, method: str | None = None, simplex: bool = True
                 ) -> np.ndarray:
    """Blend test probabilities with a fitted result: ranks are taken within the test rows, gmean is weighted;
    simplex=False (kit.task.Task.softmax) for scores that are not one distribution a row."""
    method = method or result.method
    if method not in _BLEND_OF:
        raise ValueError(f"unknown ensemble method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "stack":
        if not result.params:
            raise ValueError("method 'stack' needs the fitted stacker (MethodResult.params from evaluate_methods)")
        return apply_stack(test_probs_list, result.params)
    return blend(test_probs_list, _BLEND_OF[method], result.weights, simplex)
