"""The other task kinds (multilabel, binary, ordinal, regression): `kit init` + `kit run` as written, against the
loop a user would write by hand, on the development competitions of ../shared/competitions/fashion_tasks.py.

For each task, one after the other, never two at once:

1. the development competition is built (`fashion_tasks.py OUT/<task>_<train>_<test>_s<seed> --task T`; an
   existing folder is reused), answers beside it in `..._solution.csv`;
2. kit: `python -m kit init DIR -o RECIPE` then `python -m kit run RECIPE`, as subprocesses of this checkout, as
   written (`--budget` and `--set` only when given here); the submission it reports (`submission: PATH`, else
   `<output_dir>/<name>/submission.csv`) is scored with the task's metric (fashion_tasks.score, all test rows).
   Wall time = init + run. A failing step is one line of the table (`kit init failed: <its error>`), not a crash;
3. hand: a plain timm + PyTorch loop in this process, with torch.set_num_threads(--threads, default 2):
   efficientnet_lite0 with the offline ImageNet weights (kit.models.pretrained.load_pretrained: the package's file,
   its keys renamed onto timm's), every image resized to 64 px, normalised as the weights expect (0.5/0.5,
   kit/models/pretrained.py; --norm imagenet: ImageNet mean/std), horizontal flips, AdamW lr 1e-3, cosine over
   every step, batch 64, the epochs of kit's recipe
   (train.epochs of the recipe kit init wrote, with the --set overrides; else --epochs), trained on a seeded 90 %
   of train.csv; the other 10 % is scored for the report only. The head is a fresh nn.Linear with torch's own init
   (timm's EfficientNet init, U(-1, 1) for one output, starts regression ~15 sd off). Heads and losses:
     multilabel  one logit a tag (the tags of train.csv), BCEWithLogits; submits the tags with p >= 0.5, sorted
     binary      one logit, BCEWithLogits; submits the probability
     ordinal     one output, MSE on the grade; submits round(clip(pred, 0, 4))
     regression  one output, MSE on the standardised target; submits the prediction de-standardised

    python benchmarks/bench_tasks.py                                   # all four tasks, 4,000 / 1,000 images
    python benchmarks/bench_tasks.py --tasks binary ordinal --train 2000 --test 500
    python benchmarks/bench_tasks.py --train 400 --test 200 --epochs 1 --only hand     # a smoke test, ~3 min
    python benchmarks/bench_tasks.py --budget 5 --set ensemble.seeds=[0] --json /tmp/bench_tasks.json
    python benchmarks/bench_tasks.py --tasks binary ordinal --variants   # + binary without data.group_column
                                                                         # + ordinal grades regressed (task.loss: mse)

Each kit row also reports kit's own validation estimate (ensemble/report.json: the chosen blend's nested score or the
best member's, before a decision rule), to set beside its test score.

Long: kit init's default budget is 30 minutes of kit run a task, so the whole default run takes about two hours
plus the hand loops on 2 cores. Not part of the test suite. Prints one table (metric: higher is better except
RMSE), the threads and cores, the load average before and after, and the other processes busy on the machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing kit
TASKS = ("multilabel", "binary", "ordinal", "regression")
LOWER_IS_BETTER = {"RMSE"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def competitions_module(folder: Path):
    """fashion_tasks.py, imported from its folder (it is no package)."""
    spec = importlib.util.spec_from_file_location("fashion_tasks", folder / "fashion_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_competition(ft_path: Path, root: Path, task: str, n_train: int, n_test: int, seed: int) -> None:
    if root.exists():
        return
    subprocess.run([sys.executable, str(ft_path), str(root), "--task", task, "--train", str(n_train),
                    "--test", str(n_test), "--seed", str(seed)], check=True)


def solution_path(root: Path) -> Path:
    return Path(f"{str(root.resolve()).rstrip('/')}_solution.csv")


def score_quietly(ft, sub: Path, root: Path, task: str) -> float:
    """The metric on all test rows; fashion_tasks.score raises SystemExit on a wrong submission: made an error."""
    import contextlib
    import io
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return float(ft.score(str(sub), str(solution_path(root)), task)["all"])
    except SystemExit as e:
        raise ValueError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------- kit
def _error_line(text: str) -> str:
    """The line of a failed command's output that says why: kit's `error: ...` line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("error"):
            return ln[:160]
    return lines[-1][:160] if lines else "(no output)"


def _recipe_epochs(recipe: Path, overrides: list[str]) -> int | None:
    """train.epochs of the recipe with the overrides, as kit resolves it (defaults included), else as written."""
    try:
        from kit.recipe import load_recipe
        return int(load_recipe(recipe, list(overrides)).train.epochs)
    except Exception:  # kit is being changed: fall back to the file, then to --epochs
        pass
    for o in overrides:
        if o.startswith("train.epochs="):
            return int(o.split("=", 1)[1])
    try:
        import yaml
        return int(yaml.safe_load(recipe.read_text())["train"]["epochs"])
    except Exception:
        return None


def _submission_of(stdout: str, recipe: Path, overrides: list[str], cwd: Path) -> Path | None:
    for line in stdout.splitlines():
        m = re.match(r"\s*submission:\s*(\S.*?)\s*$", line)
        if m and Path(cwd, m.group(1)).is_file():
            return Path(cwd, m.group(1))
    try:
        import yaml
        spec = yaml.safe_load(recipe.read_text())
        name, output_dir = spec.get("name"), spec.get("output_dir", "runs")
        for o in overrides:
            key, _, value = o.partition("=")
            name = value if key == "name" else name
            output_dir = value if key == "output_dir" else output_dir
        path = Path(cwd, output_dir, str(name), "submission.csv")
        if path.is_file():
            return path
    except Exception:
        pass
    found = sorted(Path(cwd).glob("runs/*/submission.csv"))
    return found[0] if len(found) == 1 else None


def kit_side(ft, root: Path, task: str, work: Path, budget: float | None, overrides: list[str],
             timeout: float | None) -> dict:
    """kit init + kit run as subprocesses in a fresh `work` folder; returns score, seconds, epochs, note."""
    if work.exists():
        shutil.rmtree(work)  # a finished run directory would be reloaded, not trained: time a fresh run
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("KIT_CACHE_DIR", str(work.parent / "kit_cache"))
    recipe = work / "recipe.yaml"
    out = {"score": None, "seconds": None, "epochs": None, "note": "", "recipe": str(recipe), "submission": None}
    t0 = time.perf_counter()

    def step(args, what):
        log = work / f"{what.replace(' ', '_')}.log"
        p = subprocess.Popen([sys.executable, "-m", "kit", *args], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own process group
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # kit and any workers it started, nothing else
            stdout, stderr = p.communicate()
            log.write_text(stdout + "\n--- stderr ---\n" + stderr)
            return None, f"{what} timed out after {timeout:.0f} s (log: {log})"
        log.write_text(stdout + "\n--- stderr ---\n" + stderr)
        p = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
        if p.returncode != 0:
            return None, f"{what} failed (rc {p.returncode}): {_error_line(p.stderr or p.stdout)}"
        return p, ""

    init_args = ["init", str(root), "--output", str(recipe)] + (["--budget", f"{budget:g}"] if budget is not None else [])
    p, note = step(init_args, "kit init")
    if p is not None:
        out["epochs"] = _recipe_epochs(recipe, overrides)
        p, note = step(["run", str(recipe), *[a for o in overrides for a in ("--set", o)]], "kit run")
    out["seconds"] = time.perf_counter() - t0
    if p is None:
        out["note"] = note
        return out
    sub = _submission_of(p.stdout, recipe, overrides, work)
    if sub is None:
        out["note"] = f"kit run wrote no submission that could be found (log: {work / 'kit_run.log'})"
        return out
    out["submission"] = str(sub)
    out["val"] = validation_score(sub.parent)
    try:
        out["score"] = score_quietly(ft, sub, root, task)
    except Exception as e:
        out["note"] = f"kit's submission not scored: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
    return out


def validation_score(run_dir: Path) -> float | None:
    """The run's own estimate of its submission's score (ensemble/report.json: the chosen blend's nested score,
    or the best member's), before any decision rule."""
    try:
        from kit.report import read_report
        return read_report(Path(run_dir) / "ensemble" / "report.json", "").score
    except Exception:
        return None


def same_model_auc(run_dir: Path, root: Path) -> dict:
    """Out-of-fold against test ROC AUC of the very same models (TTA none): each configuration's pooled out-of-fold
    rows, and the mean test AUC of its fold models one by one, averaged over configurations. A run's submission
    averages its fold models (and refits), which raises its test score above any single model's; this compares an
    estimate with what it estimates, so a leak between folds shows as optimism (out-of-fold above test)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from kit.plan import load_plan
    from kit.predictions import load_predictions
    from kit.rundir import pred_path
    import pandas as pd
    sol = pd.read_csv(solution_path(root), dtype=str)
    truth = dict(zip(sol.iloc[:, 0], sol.iloc[:, 1].astype(float)))
    plan = load_plan(Path(run_dir) / "plan.json")
    pooled, tests = [], []
    for ms in plan.configs().values():
        oofs = [load_predictions(pred_path(run_dir, m.name, "oof", "none")) for m in ms]
        y = np.concatenate([o.labels for o in oofs])
        pooled.append(roc_auc_score(y, np.concatenate([o.probs[:, 0] for o in oofs])))
        for m in ms:
            t = load_predictions(pred_path(run_dir, m.name, "test", "none"))
            tests.append(roc_auc_score([truth[i] for i in t.ids], t.probs[:, 0]))
    return {"oof": float(np.mean(pooled)), "test": float(np.mean(tests))}


# --------------------------------------------------------------------------------------------------------- hand
def offline_efficientnet_lite0(num_outputs: int):
    """timm's efficientnet_lite0 filled from the offline package's file, through kit's one converter (the weights
    only: kit.models.pretrained.load_pretrained keeps the new head, whose shape differs from ImageNet's)."""
    import timm
    from kit.models.pretrained import load_pretrained
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_outputs)
    load_pretrained(model, "efficientnet_lite0", "offline")
    # timm's EfficientNet init draws the head from U(-1/sqrt(outputs), +): U(-1, 1) for one output, which starts a
    # regression at outputs of +-15 standard deviations; torch's own nn.Linear init (what a hand-written head gets)
    model.classifier.reset_parameters()
    return model


def load_images(folder: Path, ids, size: int, mean, std):
    import torch
    import torch.nn.functional as F
    from PIL import Image
    xs = []
    for i in ids:
        x = torch.from_numpy(np.asarray(Image.open(folder / f"{i}.png").convert("RGB")).copy())
        x = x.permute(2, 0, 1).float().div(255).unsqueeze(0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        xs.append(x)
    x = torch.cat(xs)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def hand_side(ft, root: Path, task: str, work: Path, epochs: int, seed: int, norm: str,
              size: int = 64, batch: int = 64, lr: float = 1e-3) -> dict:
    """The reference loop; writes work/submission.csv, returns score (all test rows), holdout score, seconds."""
    import torch
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    id_col, target_col = ft.COLUMNS[task][:2]
    train = pd.read_csv(root / "train.csv", dtype={id_col: str}, keep_default_na=False)
    sample = pd.read_csv(root / "sample_submission.csv", dtype={id_col: str}, keep_default_na=False)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else ((0.5,) * 3, (0.5,) * 3)
    x = load_images(root / "train", train[id_col], size, mean, std)
    xt = load_images(root / "test", sample[id_col], size, mean, std)

    raw = train[target_col]
    if task == "multilabel":
        tags = sorted({t for v in raw for t in str(v).split()})
        y = torch.tensor([[float(t in str(v).split()) for t in tags] for v in raw])
        loss_fn, n_out = torch.nn.BCEWithLogitsLoss(), len(tags)
    elif task == "binary":
        y = torch.tensor(raw.astype(float).to_numpy(), dtype=torch.float32).view(-1, 1)
        loss_fn, n_out = torch.nn.BCEWithLogitsLoss(), 1
    else:
        y = torch.tensor(raw.astype(float).to_numpy(), dtype=torch.float32).view(-1, 1)
        loss_fn, n_out = torch.nn.MSELoss(), 1
    gen = np.random.default_rng(seed)
    order = gen.permutation(len(x))
    n_hold = max(1, len(x) // 10)
    hold, fit = torch.from_numpy(order[:n_hold]), torch.from_numpy(order[n_hold:])
    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y_mean, y_std = float(y[fit].mean()), float(y[fit].std())
    y_fit = (y - y_mean) / y_std

    model = offline_efficientnet_lite0(n_out).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batches = [fit[k:k + batch] for k in range(0, len(fit), batch)]
    if len(batches[-1]) < 2:  # BatchNorm cannot train on one image
        batches = batches[:-1]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(batches)))
    for _ in range(epochs):
        model.train()
        perm = fit[torch.randperm(len(fit))]
        for k in range(len(batches)):
            idx = perm[k * batch:k * batch + len(batches[k])]
            xb = x[idx].clone()
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), y_fit[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    model.eval()

    def predict(images):
        with torch.inference_mode():
            return torch.cat([model(images[k:k + 256].contiguous(memory_format=torch.channels_last))
                              for k in range(0, len(images), 256)])

    def answers(out):
        if task == "multilabel":
            p = out.sigmoid().numpy()
            return [" ".join(t for t, on in zip(tags, row >= 0.5) if on) for row in p]
        if task == "binary":
            return out.sigmoid().view(-1).numpy().astype(float).tolist()
        if task == "ordinal":
            return np.rint(out.view(-1).numpy().clip(0, 4)).astype(int).tolist()
        return (out.view(-1).numpy() * y_std + y_mean).astype(float).tolist()

    _, metric_fn = ft.METRIC[task]
    hold_truth = raw.iloc[hold.numpy()].tolist()
    if task in ("binary", "ordinal"):
        hold_truth = [int(float(v)) for v in hold_truth]
    elif task == "regression":
        hold_truth = [float(v) for v in hold_truth]
    try:
        hold_score = float(metric_fn(hold_truth, answers(predict(x[hold]))))
    except ValueError:  # e.g. ROC AUC of a holdout with one class
        hold_score = float("nan")
    work.mkdir(parents=True, exist_ok=True)
    sub = work / "submission.csv"
    pd.DataFrame({id_col: sample[id_col], target_col: answers(predict(xt))}).to_csv(sub, index=False)
    seconds = time.perf_counter() - t0
    return {"score": score_quietly(ft, sub, root, task), "holdout": hold_score, "seconds": seconds,
            "epochs": epochs, "submission": str(sub), "note": ""}


# ------------------------------------------------------------------------------------------------------ machine
def busy_processes(limit: int = 4) -> str:
    """Other processes using CPU now (not this one or its children): what else ran."""
    try:
        ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[1:]
    except Exception:
        return "unknown (no ps)"
    mine = {os.getpid()}
    rows = []
    for line in ps:
        pid, ppid, cpu, comm = line.split(None, 3)
        if int(pid) in mine or int(ppid) in mine or comm == "ps":
            mine.add(int(pid))
            continue
        if float(cpu) >= 5.0:
            rows.append(f"{comm} {float(cpu):.0f}%")
    return ", ".join(rows[:limit]) or "nothing above 5% CPU"


def fmt(value, digits=4):
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=6, help="the hand loop's epochs when kit's recipe gives none")
    p.add_argument("--seed", type=int, default=0, help="the competition's seed and the hand loop's")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_tasks"), help="work folder")
    p.add_argument("--only", choices=["kit", "hand"])
    p.add_argument("--variants", action="store_true",
                   help="also: binary without data.group_column (out-of-fold against test AUC), ordinal grades "
                        "regressed (task.loss: mse) against kit's default, classes with the expected grade")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="passed to kit init --budget (default: kit init's own default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to kit run --set, repeatable (default: none, kit run as written)")
    p.add_argument("--kit-timeout", type=float, default=None, metavar="SECONDS", help="per kit command")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the hand loop")
    p.add_argument("--norm", choices=["imagenet", "half"], default="half",
                   help="hand loop normalisation: ImageNet mean/std, or 0.5/0.5 (what the offline weights expect, "
                        "kit/models/pretrained.py)")
    p.add_argument("--competitions", type=Path, default=REPO.parent / "shared" / "competitions",
                   help="folder of fashion_tasks.py")
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    ft = competitions_module(args.competitions)
    args.out.mkdir(parents=True, exist_ok=True)
    load0, busy0 = os.getloadavg()[0], busy_processes()
    rows = []
    for task in args.tasks:
        root = args.out / f"{task}_{args.train}_{args.test}_s{args.seed}"
        build_competition(args.competitions / "fashion_tasks.py", root, task, args.train, args.test, args.seed)
        row = {"task": task, "metric": ft.METRIC[task][0], "data": str(root)}
        epochs = args.epochs
        if args.only != "hand":
            print(f"[{task}] kit init + kit run ...", flush=True)
            kit = kit_side(ft, root, task, args.out / f"kit_{root.name}", args.budget, args.overrides,
                           args.kit_timeout)
            row["kit"] = kit
            epochs = kit["epochs"] or args.epochs
            print(f"[{task}] kit: {fmt(kit['score'])} in {fmt(kit['seconds'], 0)} s {kit['note']}", flush=True)
        if args.only != "kit":
            print(f"[{task}] hand loop, {epochs} epochs ...", flush=True)
            try:
                hand = hand_side(ft, root, task, args.out / f"hand_{root.name}", epochs, args.seed, args.norm)
            except Exception as e:
                hand = {"score": None, "holdout": None, "seconds": None, "epochs": epochs,
                        "note": f"hand loop failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
            row["hand"] = hand
            print(f"[{task}] hand: {fmt(hand['score'])} (holdout {fmt(hand.get('holdout'))}) in "
                  f"{fmt(hand['seconds'], 0)} s {hand['note']}", flush=True)
        if args.variants and args.only != "hand" and task == "binary":  # the same run, folds that split patients
            print(f"[{task}] kit without data.group_column ...", flush=True)
            v = kit_side(ft, root, task, args.out / f"kit_{root.name}_nogroups", args.budget,
                         [*args.overrides, "data.group_column=null"], args.kit_timeout)
            row["kit_no_groups"] = v
            print(f"[{task}] kit without groups: test {fmt(v['score'])}, out-of-fold {fmt(v.get('val'))} "
                  f"(with groups: test {fmt(row['kit']['score'])}, out-of-fold {fmt(row['kit'].get('val'))})",
                  flush=True)
            for name, d in (("with groups", row["kit"]), ("without groups", v)):
                if d.get("submission"):
                    d["same_models"] = same_model_auc(Path(d["submission"]).parent, root)
                    print(f"[{task}] {name}, the same models (TTA none): out-of-fold {d['same_models']['oof']:.4f}, "
                          f"test {d['same_models']['test']:.4f}", flush=True)
        if args.variants and args.only != "hand" and task == "ordinal":  # the other reading of grades
            print(f"[{task}] kit regressing the grades (task.loss: mse) ...", flush=True)
            v = kit_side(ft, root, task, args.out / f"kit_{root.name}_mse", args.budget,
                         [*args.overrides, "task.loss=mse"], args.kit_timeout)
            row["kit_mse"] = v
            print(f"[{task}] kit regressing the grades: test {fmt(v['score'])}, out-of-fold {fmt(v.get('val'))} "
                  f"(as classes, the default: test {fmt(row['kit']['score'])})", flush=True)
        k, h = (row.get("kit") or {}).get("score"), (row.get("hand") or {}).get("score")
        row["kit_minus_hand"] = None if k is None or h is None else k - h
        rows.append(row)
    load1, busy1 = os.getloadavg()[0], busy_processes()

    print(f"\nbench_tasks: {args.train} train / {args.test} test images a task (seed {args.seed}), "
          f"efficientnet_lite0 offline at 64 px; hand loop {torch.get_num_threads()} torch threads, "
          f"{args.norm} normalisation; machine {os.cpu_count()} cores; kit as subprocesses, one after the other "
          f"(budget: {'kit default' if args.budget is None else f'{args.budget:g} min'}; overrides: "
          f"{args.overrides or 'none'})")
    print(f"load average {load0:.1f} before, {load1:.1f} after; other processes busy before: {busy0}; after: {busy1}")
    header = ["task", "metric", "kit (all)", "kit val", "kit s", "hand (all)", "hand holdout", "hand s", "epochs",
              "kit - hand"]
    table = []
    notes = []
    for r in rows:
        kit, hand = r.get("kit") or {}, r.get("hand") or {}
        metric = r["metric"] + (" (lower better)" if r["metric"] in LOWER_IS_BETTER else "")
        table.append([r["task"], metric, fmt(kit.get("score")), fmt(kit.get("val")), fmt(kit.get("seconds"), 0),
                      fmt(hand.get("score")),
                      fmt(hand.get("holdout")), fmt(hand.get("seconds"), 0), str(hand.get("epochs") or kit.get("epochs") or "-"),
                      "-" if r["kit_minus_hand"] is None else f"{r['kit_minus_hand']:+.4f}"])
        for name, v in (("no groups", r.get("kit_no_groups")), ("grades regressed (task.loss: mse)", r.get("kit_mse"))):
            if v:
                notes.append(f"  {r['task']} kit, {name}: test {fmt(v.get('score'))}, out-of-fold {fmt(v.get('val'))}, "
                             f"{fmt(v.get('seconds'), 0)} s {v.get('note', '')}")
        for side, d in (("kit", kit), ("hand", hand)):
            if d.get("note"):
                notes.append(f"  {r['task']} {side}: {d['note']}")
        if args.only != "hand" and not kit:
            notes.append(f"  {r['task']} kit: not run")
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for t in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths))))
    if notes:
        print("\n".join(notes))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads(),
                                         "cores": os.cpu_count(), "load_before": load0, "load_after": load1,
                                         "busy_before": busy0, "busy_after": busy1, "args": {
                                             k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
                                        indent=2))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
