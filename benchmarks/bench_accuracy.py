"""Accuracy on a real competition: the recipe `kit init` writes, against the loop a user would write by hand.

Both train efficientnet_lite0 (the offline ImageNet weights) at 64 px on the development competition built from
Fashion-MNIST's *training* file (../shared/competitions/fashion_dev.py: 10,000 labelled 28 px images, 10 classes,
2,000 test images whose answers sit beside the folder), for the same epochs, in the same process, one after the
other, and are scored on the test answers:

- hand: a plain timm + PyTorch loop on decoded in-memory tensors: AdamW (weight decay 0.01), one-cycle with 10 %
  warm-up, lr 1e-3, batch 64, label smoothing 0.1, the whole image resized (no crop), horizontal flips, all
  labelled images; the test prediction averages the image and its mirror;
- kit: `kit init DIR` as it is, with `--set` only for what the comparison fixes (epochs, one seed, batch 64,
  lr 1e-3, label smoothing 0.1) and anything given with --set.

    apt-get install -y dataset-fashion-mnist && python ../shared/competitions/fashion_dev.py /tmp/fashion_dev
    python benchmarks/bench_accuracy.py /tmp/fashion_dev --epochs 3            # ~15 min on 2 cores
    python benchmarks/bench_accuracy.py /tmp/fashion_dev --epochs 3 --only kit --set train.warmup_epochs=1.0
    python benchmarks/bench_accuracy.py /tmp/fashion_dev --default 30   # the whole default recipe: ~30 min

Long: not part of the test suite. Prints both test accuracies, their difference, and the wall times.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing kit


def _solution(root: Path) -> pd.DataFrame:
    return pd.read_csv(f"{str(root.resolve()).rstrip('/')}_solution.csv", dtype=str)


def hand_loop(root: Path, epochs: int, size: int = 64, batch: int = 64, lr: float = 1e-3, seed: int = 0) -> float:
    """The reference: what a competitor writes in twenty lines. Returns the accuracy on all test images."""
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from kit.models.pretrained import load_pretrained
    torch.manual_seed(seed)
    train = pd.read_csv(root / "train.csv", dtype=str)
    classes = sorted(train["label"].unique())

    def tensors(folder, ids):
        x = np.stack([np.asarray(Image.open(root / folder / f"{i}.png").convert("RGB")) for i in ids])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)  # the weights' mean/std
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    x = tensors("train", train["image_id"])
    y = torch.tensor([classes.index(c) for c in train["label"]])
    sol = _solution(root)
    xt = tensors("test", sol["image_id"])
    model = timm.create_model("efficientnet_lite0", num_classes=len(classes))
    load_pretrained(model, "efficientnet_lite0", "offline")
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for k in range(len(x) // batch):
            idx = order[k * batch:(k + 1) * batch]
            xb = x[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        probs = []
        for k in range(0, len(xt), 256):
            xb = xt[k:k + 256].contiguous(memory_format=torch.channels_last)
            probs.append((model(xb).softmax(1) + model(xb.flip(-1)).softmax(1)) / 2)
    pred = [classes[i] for i in torch.cat(probs).argmax(1).tolist()]
    return float(np.mean(np.array(pred) == sol["label"].to_numpy()))


def kit_recipe(root: Path, epochs: int, overrides: list[str], out_dir: Path):
    """kit init's recipe for `root` (its default epochs, untimed), with one seed at `epochs` and the hand loop's
    batch, lr and label smoothing."""
    from kit.init import init_recipe
    from kit.recipe import load_recipe
    path = out_dir / "recipe.yaml"
    init_recipe(root, out=path, force=True, budget=None)
    fixed = [f"train.epochs={epochs}", "ensemble.seeds=[0]", "train.batch_size=64", "train.lr=1e-3",
             "train.label_smoothing=0.1", f"output_dir={out_dir / 'runs'}", f"leaderboard={out_dir / 'lb.sqlite'}"]
    if isinstance(load_recipe(path).data.refit, list):  # refitted seeds: the one seed's refit only
        fixed.append("data.refit=[0]")
    return load_recipe(path, fixed + list(overrides))


def kit_run(root: Path, epochs: int, overrides: list[str], out_dir: Path) -> tuple[float, dict]:
    """kit init's recipe, run; returns (accuracy on all test images, the summary dict)."""
    from kit.run import run, summary_dict
    recipe = kit_recipe(root, epochs, overrides, out_dir)
    summary = run(recipe, log=lambda m: None)
    return accuracy(root, summary.submission), summary_dict(summary)


def accuracy(root: Path, submission) -> float:
    """A submission's accuracy on all the test answers beside `root`."""
    sub = pd.read_csv(submission, dtype=str)
    sol = _solution(root).set_index("image_id").loc[sub["image_id"]]
    return float(np.mean(sub["label"].to_numpy() == sol["label"].to_numpy()))


def default_recipe(root: Path, budget: float, overrides: list[str], keep: Path | None = None) -> None:
    """What a user types, timed as a whole: `kit init ROOT --budget B` then `kit run recipe.yaml` (the kit command's
    own entry point, in this process), and the submission scored on the test answers. keep: work in this new
    folder (recipe, run directory, cache) and leave it there, e.g. for bench_tta_choice.py."""
    import contextlib
    import json
    import torch
    from kit.cli import main as kit
    if keep is not None and keep.exists():
        raise SystemExit(f"--keep {keep}: the folder exists; give a new one (nothing in it is replaced)")
    work = contextlib.nullcontext(str(keep)) if keep is not None else tempfile.TemporaryDirectory()
    with work as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("KIT_CACHE_DIR", str(tmp / "cache"))
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        assert kit(["init", str(root), "-o", str(tmp / "recipe.yaml"), "--budget", str(budget)]) == 0
        sets = [f"output_dir={tmp / 'runs'}", f"leaderboard={tmp / 'lb.sqlite'}", *overrides]
        assert kit(["run", str(tmp / "recipe.yaml"), *[a for o in sets for a in ("--set", o)]]) == 0
        minutes = (time.perf_counter() - t0) / 60
        recipe = (tmp / "recipe.yaml").read_text()
        (run,) = (tmp / "runs").iterdir()
        acc, n_test = accuracy(root, run / "submission.csv"), len(pd.read_csv(run / "submission.csv"))
        report = json.loads((run / "ensemble" / "report.json").read_text()) \
            if (run / "ensemble" / "report.json").exists() else {}
        members = member_accuracies(root, run)
    print(f"\n{root}: kit init --budget {budget:g}, then kit run, as they are (overrides: {overrides or 'none'}); "
          f"{torch.get_num_threads()} threads, load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("\n".join(f"  | {line}" for line in recipe.splitlines() if "epochs" in line))
    for name, (val, test) in members.items():
        print(f"  member {name}: validation {val}, test {test}")
    print(f"  kit test accuracy {acc:.4f} (all {n_test:,} test images)  {minutes:.1f} min (budget {budget:g})"
          + (f"  blend {report.get('chosen')}" if report else ""))


def member_accuracies(root: Path, run: Path) -> dict:
    """Each member's validation score and test accuracy by TTA mode (from its done.json and saved predictions):
    what the blend and the refits are made of."""
    import json
    from kit.predictions import load_predictions
    sol = _solution(root).set_index("image_id")
    out = {}
    for d in sorted((run / "members").iterdir()):
        done = json.loads((d / "done.json").read_text())
        val = ", ".join(f"{m} {s['accuracy']:.4f}" for m, s in done.get("scores", {}).items()) or "none (refit)"
        tests = []
        for f in sorted((d / "preds").glob("test_*.npz")):
            p = load_predictions(f)
            truth = sol.loc[list(p.ids), "label"].to_numpy()
            tests.append(f"{f.stem[5:]} {np.mean(np.asarray(p.classes)[p.probs.argmax(1)] == truth):.4f}")
        out[d.name] = (val, ", ".join(tests))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the development competition (fashion_dev.py OUT)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--only", choices=["kit", "hand"])
    p.add_argument("--default", type=float, metavar="MINUTES", default=None,
                   help="kit only: the whole recipe kit init writes for a budget of MINUTES (3 seeds, TTA, blend, "
                        "refit), as it is; prints its test accuracy and wall time against the budget")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more overrides of kit's recipe (an ablation), repeatable")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="--default only: run in DIR (a new folder) and keep the run directory there")
    args = p.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    if args.default is not None:
        default_recipe(args.root, args.default, args.overrides, args.keep)
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KIT_CACHE_DIR", str(Path(tmp) / "cache"))
        if args.only != "hand":
            t0 = time.perf_counter()
            acc, d = kit_run(args.root, args.epochs, args.overrides, Path(tmp))
            results["kit"] = (acc, time.perf_counter() - t0, d)
        if args.only != "kit":
            t0 = time.perf_counter()
            results["hand"] = (hand_loop(args.root, args.epochs), time.perf_counter() - t0, None)
    print(f"{args.root}: {args.epochs} epochs, efficientnet_lite0 offline at 64 px, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.1f}; kit overrides: {args.overrides or 'none'}")
    for name, (acc, seconds, d) in results.items():
        extra = ""
        if d:
            extra = f"  (validation {d['best_member_score']:.4f}, TTA {d['tta']}, blend {d['chosen']})"
        print(f"  {name:5s} test accuracy {acc:.4f}  {seconds:6.0f} s{extra}")
    if len(results) == 2:
        print(f"  kit - hand: {results['kit'][0] - results['hand'][0]:+.4f}")


if __name__ == "__main__":
    main()
