"""Pruning's saving: the same seeded search run once per pruner in one process, on the bundled digits, with
test_resnet from scratch at 32 px. Prints the epochs each study trained, its best score and wall time, and the
saving against no pruning.

    python benchmarks/bench_tune.py                    # 20 trials x 8 epochs; none, median, hyperband: ~3 min
    python benchmarks/bench_tune.py --trials 12 --epochs 6 --pruners none successive_halving

Trials are seeded by their number, so the first 10 (TPE's random start-up) try the same values in every study:
the studies differ only in what the pruner stops, and later in what TPE learns from that.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from optuna.trial import TrialState

from kit.recipe import recipe_from_dict
from kit.tune import tune


def recipe(out: Path, pruner: str, a) -> object:
    # 400 digits: 320 train / 80 validation; 320 / 32 = 10 steps an epoch, ~1 s on one core.
    return recipe_from_dict({
        "name": f"bench-{pruner}", "output_dir": str(out), "leaderboard": f"sqlite:///{out}/leaderboard.sqlite",
        "data": {"source": "digits", "digits_size": 16, "limit": a.images, "num_workers": 0},
        "augment": {"input_size": 32, "train": []},
        "model": {"backbone": "test_resnet", "weights": "none", "channels_last": False},
        "train": {"epochs": a.epochs, "batch_size": 32, "warmup_epochs": 0, "metric": a.metric, "device": "cpu"},
        "search": {"trials": a.trials, "sampler": "tpe", "pruner": pruner, "seed": a.seed, "params": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
            "train.weight_decay": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
            "model.drop_rate": {"type": "float", "low": 0.0, "high": 0.5}}}})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--pruners", nargs="+", default=["none", "median", "hyperband"],
                   choices=["none", "median", "hyperband", "successive_halving"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{a.trials} trials x {a.epochs} epochs, {a.images} digits at 32 px, test_resnet, "
          f"{a.threads} thread(s), val {a.metric}, TPE seed {a.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        rows = []
        for pruner in a.pruners:
            t0 = time.perf_counter()
            study = tune(recipe(out, pruner, a), log=lambda msg: None)
            seconds = time.perf_counter() - t0
            states = [t.state for t in study.trials]
            rows.append({"pruner": pruner, "epochs": sum(len(t.intermediate_values) for t in study.trials),
                         "best": study.best_value, "best_trial": study.best_trial.number, "seconds": seconds,
                         "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
                         "failed": states.count(TrialState.FAIL)})
    ref = rows[0]
    print(f"{'pruner':<20}{'epochs':>8}{'complete':>10}{'pruned':>8}{'failed':>8}{'best':>9}{'trial':>7}"
          f"{'seconds':>9}{'epochs saved':>14}{'time saved':>12}")
    for r in rows:
        print(f"{r['pruner']:<20}{r['epochs']:>8}{r['complete']:>10}{r['pruned']:>8}{r['failed']:>8}"
              f"{r['best']:>9.4f}{r['best_trial']:>7}{r['seconds']:>9.1f}{1 - r['epochs'] / ref['epochs']:>14.0%}"
              f"{1 - r['seconds'] / ref['seconds']:>12.0%}")
    print(f"(saved: against {ref['pruner']}, {ref['epochs']} epochs = {a.trials} trials x {a.epochs}; "
          f"best: best validation {a.metric} found)")


if __name__ == "__main__":
    main()
