"""How well the TTA rule chooses, measured on finished runs' own validation rows (no test answers).

    python benchmarks/bench_tta_choice.py runs/fashion_default [runs/other ...] [--splits 2000]

For each configuration of each run, its pooled out-of-fold predictions of every TTA mode are split in two random
halves (stratified by label), `--splits` times: each rule chooses a mode on one half, and the mode it chose is
scored on the other. Rules:

- metric: the best score on the metric alone, `none` on ties (kit's rule before the paired-noise tie-break);
- kit: kit.choice.choose_tta (`none` unless a mode beats it by more than 2 paired standard errors on the metric;
  among none and the modes within that margin, the lowest log loss: kit.choice's rule, TTA setting);
- margin, metric only: kit.choice's rule without the log-loss step (its blend setting);
- previous: kit's rule before kit.choice (the metric's best unless others are within 2 paired standard errors of
  it, then the lowest log loss of those);
- log_loss: the lowest log loss alone;
- oracle: the mode best on the scoring half (the ceiling).

Prints, per configuration and over all, each rule's mean score on the held-out halves and how often it chose each
mode. Seconds; numpy only, nothing trained.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from kit import metrics as M
from kit.choice import NOISE_SE, choose_tta
from kit.context import load_recipe_or_run, member_done, prepare_run
from kit.pool import config_oofs
from kit.predictions import Predictions


def _metric_rule(oofs, metric):
    score = {m: M.score(metric, p.labels, p.probs) for m, p in oofs.items()}
    best = None
    for m in sorted(oofs, key=lambda m: m != "none"):  # none first: it wins ties
        if best is None or M.better(metric, score[m], score[best]):
            best = m
    return best


def _log_loss_rule(oofs, metric):
    return min(sorted(oofs, key=lambda m: m != "none"), key=lambda m: M.score("log_loss", oofs[m].labels,
                                                                             oofs[m].probs))


def _previous_rule(oofs, metric):
    """kit's TTA rule before kit.choice: the metric's best unless others are close, then the lowest log loss."""
    modes = sorted(oofs, key=lambda m: m != "none")
    ref = oofs[modes[0]]
    probs = {m: oofs[m].reorder(ref.ids).probs for m in modes}
    y = ref.labels
    score = {m: M.score(metric, y, probs[m]) for m in modes}
    best = _metric_rule(oofs, metric)
    close = [m for m in modes if m == best or abs(score[best] - score[m])
             <= NOISE_SE * M.paired_se(metric, y, probs[best], probs[m])]
    if len(close) == 1 or metric == "log_loss":
        return best
    return min(close, key=lambda m: M.score("log_loss", y, probs[m]))


def _margin_only(oofs, metric):
    from kit.choice import choose
    modes = sorted(oofs, key=lambda m: m != "none")
    ref = oofs[modes[0]]
    return choose({m: oofs[m].reorder(ref.ids).probs for m in modes}, ref.labels, metric, modes[0]).name


RULES = {"metric": _metric_rule, "kit": lambda oofs, metric: choose_tta(oofs, metric).name,
         "margin, metric only": _margin_only,
         "previous": _previous_rule, "log_loss": _log_loss_rule}


def _half(p: Predictions, rows) -> Predictions:
    return Predictions(p.ids[rows], p.probs[rows], p.classes, p.labels[rows])


def check(oofs: dict, metric: str, splits: int, seed: int = 0) -> dict:
    from sklearn.model_selection import StratifiedShuffleSplit
    ref = next(iter(oofs.values()))
    oofs = {m: p.reorder(ref.ids) for m, p in oofs.items()}
    y = ref.labels
    sss = StratifiedShuffleSplit(n_splits=splits, test_size=0.5, random_state=seed)
    got = {r: [] for r in [*RULES, "oracle"]}
    picks = {r: Counter() for r in got}
    for a, b in sss.split(np.zeros(len(y)), y):
        choose = {m: _half(p, a) for m, p in oofs.items()}
        held = {m: M.score(metric, y[b], p.probs[b]) for m, p in oofs.items()}
        for r, rule in RULES.items():
            m = rule(choose, metric)
            got[r].append(held[m])
            picks[r][m] += 1
        m = (max if M.get_metric(metric).higher_is_better else min)(held, key=held.get)
        got["oracle"].append(held[m])
        picks["oracle"][m] += 1
    return {r: (float(np.mean(v)), picks[r]) for r, v in got.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--splits", type=int, default=2000)
    a = ap.parse_args()
    total = {}
    for run_dir in a.runs:
        recipe = load_recipe_or_run(run_dir)
        ctx = prepare_run(recipe, write=False)
        metric = recipe.train.metric
        for config, ms in ctx.plan.configs().items():
            done = {m.name: member_done(ctx.run_dir, m) for m in ms}
            if not all(done.values()):
                continue
            oofs = config_oofs(ctx.run_dir, ms, done)
            if len(oofs) < 2:
                continue
            full = {m: M.score(metric, p.labels, p.probs) for m, p in oofs.items()}
            print(f"{run_dir} {config} ({len(next(iter(oofs.values())).ids)} rows): all rows "
                  + ", ".join(f"{m} {s:.4f}" for m, s in full.items())
                  + f"; kit's rule on all rows: {choose_tta(oofs, metric).name}")
            res = check(oofs, metric, a.splits)
            for r, (s, picks) in res.items():
                total.setdefault(r, []).append(s)
                print(f"  {r:9s} held-out half {metric} {s:.4f}  chose " + ", ".join(f"{m} {n}" for m, n in
                                                                                   picks.most_common()))
    print(f"over {len(total.get('kit', []))} configurations, mean held-out-half score by rule "
          f"({a.splits} halvings each; the oracle is the ceiling):")
    for r, v in total.items():
        print(f"  {r:9s} {np.mean(v):.5f}")


if __name__ == "__main__":
    main()
