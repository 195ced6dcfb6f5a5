"""How well the blend choice chooses, measured on finished runs' own out-of-fold rows (no test answers).

    python benchmarks/bench_blend_choice.py runs/quickstart runs/fashion_kfold [...] [--splits 1000]

For each run, every blending method of its recipe is scored once as the run scores it (kit.ensemble.evaluate_methods
on the configurations' pooled out-of-fold predictions at their chosen TTA modes; fitted methods by their nested,
held-out rows). Then its rows are split in two random halves (stratified by label), `--splits` times: each rule
chooses a method on one half, and the method it chose is scored on the other. Rules:

- kit: kit.ensemble.choose_method (kit.choice: `mean` unless another method beats it by more than 2 paired standard
  errors on the metric);
- margin + log loss: the same, with log loss deciding among the methods within the margin (kit.choice's TTA setting);
- strictly best: the best nested score, ties to the method listed first (`best` is listed first): kit's rule before;
- always mean;
- oracle: the method best on the scoring half (the ceiling).

Prints, per run, each rule's mean held-out score with its standard error over the splits, and how often it chose
each method. numpy only, nothing trained; each run's methods are evaluated once (seconds), the splits take ~1 s per
100 for 3 members.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from kit import choice as C
from kit import ensemble as E
from kit import metrics as M
from kit.context import load_recipe_or_run, prepare_run
from kit.predictions import Predictions
from kit.results import collect


def run_methods(run_dir) -> tuple[dict, np.ndarray, str]:
    """({method: nested rows}, labels, metric) of a finished run, as kit submit scores its blends."""
    ctx = prepare_run(load_recipe_or_run(run_dir), write=False)
    configs, pending = collect(ctx, need_test=False)
    if pending or len(configs) < 2:
        raise SystemExit(f"{run_dir}: {len(pending)} members unfinished, {len(configs)} configurations; the bench "
                         f"needs a finished run of at least 2 configurations")
    r = ctx.recipe
    ids = configs[0].oof.ids
    oofs = [c.oof.reorder(ids) for c in configs]
    if r.ensemble.temperature:
        oofs = [Predictions(o.ids, E.apply_temperature(o.probs, E.temperature_scale(o.probs, o.labels)), o.classes,
                            o.labels) for o in oofs]
    fold_of = dict(zip(ctx.sources.train.ids, ctx.folds))
    folds = np.array([fold_of[i] for i in ids]) if r.data.split == "kfold" else None
    methods = E.evaluate_methods(oofs, r.train.metric, folds=folds, methods=r.ensemble.methods, seed=r.data.seed)
    return {k: v.nested_probs for k, v in methods.items()}, oofs[0].labels, r.train.metric


def _strictly_best(cands, y, metric):
    best = None
    for n, p in cands.items():
        s = M.score(metric, y, p)
        if best is None or M.better(metric, s, best[1]):
            best = (n, s)
    return best[0]


def _reference(cands):
    return E.REFERENCE_METHOD if E.REFERENCE_METHOD in cands else next(iter(cands))


RULES = {
    "kit": lambda c, y, m: C.choose(c, y, m, _reference(c)).name,
    "margin + log loss": lambda c, y, m: C.choose(c, y, m, _reference(c), secondary="log_loss").name,
    "strictly best": _strictly_best,
    "always mean": lambda c, y, m: _reference(c),
}


def check(cands: dict, y: np.ndarray, metric: str, splits: int, seed: int = 0) -> dict:
    from sklearn.model_selection import StratifiedShuffleSplit
    strat = y if np.bincount(y).min() >= 2 else None
    sss = StratifiedShuffleSplit(n_splits=splits, test_size=0.5, random_state=seed)
    got = {r: [] for r in [*RULES, "oracle"]}
    picks = {r: Counter() for r in got}
    for a, b in sss.split(np.zeros(len(y)), strat if strat is not None else np.zeros(len(y))):
        half = {n: p[a] for n, p in cands.items()}
        held = {n: M.score(metric, y[b], p[b]) for n, p in cands.items()}
        for rule, fn in RULES.items():
            pick = fn(half, y[a], metric)
            got[rule].append(held[pick])
            picks[rule][pick] += 1
        oracle = _strictly_best({n: p[b] for n, p in cands.items()}, y[b], metric)
        got["oracle"].append(held[oracle])
        picks["oracle"][oracle] += 1
    return {r: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))), picks[r]) for r, v in got.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--splits", type=int, default=1000)
    a = ap.parse_args()
    print(f"blend choice on finished runs' out-of-fold rows: choose on one half, score on the other, {a.splits} "
          f"stratified splits; nothing else measured in this run (numpy only)")
    for run_dir in a.runs:
        cands, y, metric = run_methods(run_dir)
        full = {n: M.score(metric, y, p) for n, p in cands.items()}
        print(f"\n{run_dir}: {len(y)} rows, {metric}; nested scores on all rows: "
              + ", ".join(f"{n} {s:.4f}" for n, s in full.items()))
        res = check(cands, y, metric, a.splits)
        print(f"| rule | held-out {metric} (mean over splits) | SE over splits | chose |")
        print("|---|---:|---:|---|")
        for rule, (mean, se, picks) in res.items():
            chose = ", ".join(f"{n} {k}" for n, k in picks.most_common())
            print(f"| {rule} | {mean:.5f} | {se:.5f} | {chose} |")


if __name__ == "__main__":
    main()
