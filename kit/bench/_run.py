"""Running a suite: every cell an ordinary kit run (kit.run), one process at a time per cell (a file lock beside
its run directory, so processes and machines sharing the suite's folder split it and no cell trains twice),
finished cells skipped (cell.json), a killed cell resumed from its members' last checkpoints.

    suite = load_suite("recipes/suites/mini.yaml")
    run_suite(suite)                  # trains what is left; another process may run the same suite beside it
    plan_suite(suite)                 # the cells and their estimated minutes, nothing trained
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

from kit.bench._suite import Cell, Suite
from kit.errors import RunDirError
from kit.readers import read_json
from kit.rundir import write_json_atomic

CELL_FILE = "cell.json"  # in a cell's run directory once its scores are recorded: the cell is finished
WAIT_S = 5.0  # how often a process whose remaining cells are all held by others looks again


def cell_done(cell: Cell) -> dict | None:
    f = cell.run_dir / CELL_FILE
    if not f.is_file():
        return None
    rec = read_json(f, fix="remove it to run the cell again")
    return rec if isinstance(rec, dict) else None


def run_suite(suite: Suite, *, executor: str = "local", address: str | None = None, wait: bool = True,
              log=print) -> list[dict]:
    """Run every unfinished cell this process can lock; then (wait) wait for the cells other processes hold.
    Returns the records of every finished cell."""
    from filelock import FileLock, Timeout
    cells = suite.cells
    log(f"suite {suite.name} (hash {suite.hash}): {len(cells)} cells = {len(suite.spec.datasets)} data sets x "
        f"{len(suite.spec.entries)} entries x {len(suite.spec.seeds)} seeds, in {suite.root}")
    while True:
        held = []
        for i, cell in enumerate(cells):
            if cell_done(cell) is not None:
                continue
            cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cell.run_dir) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                held.append(cell)
                continue
            try:
                if cell_done(cell) is None:  # finished by another process between the look and the lock
                    log(f"cell {i + 1}/{len(cells)} {cell.key}: running")
                    rec = run_cell(suite, cell, executor=executor, address=address)
                    log(f"cell {cell.key}: {_describe(rec)}")
            finally:
                lock.release()
        if not held or not wait:
            break
        log(f"{len(held)} cell(s) held by other processes ({held[0].key}, ...): waiting for them")
        time.sleep(WAIT_S)
    return [r for r in (cell_done(c) for c in cells) if r is not None]


def _describe(rec: dict) -> str:
    test = f", test {rec['test']:.4f}" if rec.get("test") is not None else ""
    return (f"validation {rec['metric']} {rec['validation']:.4f}{test} ({rec['wall_time_s']:.0f} s, "
            f"{rec['train_images_per_s'] or 0:.0f} training / {rec['infer_images_per_s'] or 0:.0f} inference img/s)")


def run_cell(suite: Suite, cell: Cell, *, executor: str = "local", address: str | None = None) -> dict:
    """One cell: kit run (resumed where a killed process left it), its scores, throughput and provenance written to
    <run_dir>/cell.json and recorded on the leaderboard (kind "suite")."""
    from kit.run import finish, train
    t0 = time.time()
    recipe = cell.recipe
    if suite.spec.budget.minutes is not None:
        recipe = recipe.with_overrides({"train.epochs": budget_epochs(recipe, suite.spec.budget.minutes)},
                                       source=f"{suite.path} (budget.minutes)")
    ctx, _ = train(recipe, log=lambda msg: None, executor=executor, address=address)
    summary = finish(ctx, t0=t0)
    rec = cell_record(suite, cell, summary, time.time() - t0, ctx)
    record_cell(suite, cell, rec, ctx.recipe)  # recorded first: cell.json marks a cell finished, on the leaderboard
    write_json_atomic(cell.run_dir / CELL_FILE, rec)
    return rec


def cell_record(suite: Suite, cell: Cell, summary, wall_s: float, ctx) -> dict:
    """What a finished cell measured, and what produced it (`ctx`: the kit.context.RunContext the cell ran in)."""
    import pandas as pd
    from kit.leaderboard import environment
    from kit.record import environment_choices
    ds = suite.spec.datasets[cell.dataset]
    test = public = None
    if ds.solution is not None and summary.submission is not None:
        from kit.leaderboard import score_submission
        scored = score_submission(summary.submission, ds.solution, summary.metric)
        test, public = scored["private"], scored["public"]
    elif summary.test_scores:
        test, public = summary.test_scores["private"], summary.test_scores["public"]
    train_ips = []
    for m in ctx.plan.members:
        hist = cell.run_dir / "members" / m.name / "history.csv"
        if hist.is_file():
            h = pd.read_csv(hist)
            if "train_images_per_s" in h:
                train_ips.append(float(h["train_images_per_s"].mean()))
    env = environment()
    return {"format": 1, "suite": suite.name, "suite_hash": suite.hash, "dataset": cell.dataset,
            "entry": cell.entry, "seed": cell.seed, "metric": summary.metric,
            "validation": summary.validation_score(), "test": test, "test_public": public,
            "wall_time_s": wall_s, "train_images_per_s": sum(train_ips) / len(train_ips) if train_ips else None,
            "infer_images_per_s": infer_speed(cell.run_dir), "recipe_hash": ctx.plan.recipe_hash,
            "backbone": ctx.recipe.model.backbone, "strategy": ctx.plan.members[0].recipe.model.strategy,
            "epochs": ctx.recipe.train.epochs, "n_train": ctx.plan.data["n_train"],
            "numerics": environment_choices(ctx), "versions": env.get("versions", {}),
            "git_commit": env.get("git_commit"), "machine": machine()}


def infer_speed(run_dir) -> float | None:
    """Images/s of the finished run's chosen ensemble (kit.load's timing pass: every model, TTA and the blend)."""
    import kit
    try:
        return 1000.0 / kit.load(run_dir).time_per_1000()
    except RunDirError:
        return None


def machine() -> dict:
    import os
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads":
            torch.get_num_threads(), "gpu": gpu, "system": platform.platform()}


def record_cell(suite: Suite, cell: Cell, rec: dict, recipe) -> None:
    from kit.leaderboard import Entry, record
    score = rec["test"] if rec["test"] is not None else rec["validation"]
    extra = {k: rec[k] for k in ("suite", "suite_hash", "dataset", "entry", "validation", "test", "test_public",
                                 "train_images_per_s", "infer_images_per_s", "epochs", "n_train", "numerics",
                                 "machine")}
    record([Entry(kind="suite", name=f"{suite.name}:{cell.dataset}:{cell.entry}", metric=rec["metric"], score=score,
                  seed=cell.seed, recipe_name=cell.recipe.name, recipe_hash=rec["recipe_hash"],
                  recipe=recipe.to_dict(), backbone=rec["backbone"], strategy=rec["strategy"],
                  run_dir=str(cell.run_dir), wall_time_s=rec["wall_time_s"], versions=rec["versions"],
                  git_commit=rec["git_commit"], extra=extra)], url=suite.spec.leaderboard)


# ---------------------------------------------------------------- planning a suite

def budget_epochs(recipe, minutes: float, est: dict | None = None) -> int:
    """The most epochs (up to the default) whose run of this cell fits `minutes`, from kit init's timing (`est`:
    estimate(recipe), when it is at hand; it does not depend on the epochs)."""
    est = est or estimate(recipe)
    spare = minutes * 60 - est["fixed_s"] - est["predict_s"]
    return max(1, min(recipe.train.epochs, int(spare // max(est["epoch_s"], 1e-9))))


def estimate(recipe) -> dict:
    """Seconds of a cell: per epoch of training, predicting, and the fixed start-up, from kit init's measured
    speed of the cell's backbone at its input size (kit.init.measure_speed) and the plan's work."""
    from kit.context import load_checked_sources
    from kit.init import FIXED_MINUTES, LOADER_EFFICIENCY, measure_speed
    from kit.plan import estimated_work, make_plan
    sources, _ = load_checked_sources(recipe)
    plan = make_plan(recipe, sources)
    speed = {}
    train = predict = 0.0
    for m in plan.members:
        key = (m.recipe.model.backbone, m.data_config["input_size"])
        if key not in speed:
            speed[key] = measure_speed(key[1], backbone=key[0])
        w = estimated_work(plan, m)
        per_epoch = w["train_images"] / max(m.recipe.train.epochs, 1)
        if m.recipe.model.strategy == "feature_extract":  # embeddings once, then a head in seconds
            predict += (plan.data["n_train"] + plan.data["n_test"]) / speed[key]["predict"]
        else:
            train += per_epoch / (speed[key]["train"] * LOADER_EFFICIENCY)
        predict += w["predict_images"] / speed[key]["predict"]
    return {"epoch_s": train, "predict_s": predict, "fixed_s": FIXED_MINUTES * 60, "members": len(plan.members),
            "epochs": recipe.train.epochs}


def plan_suite(suite: Suite) -> list[dict]:
    """Each cell with its state and estimated minutes; nothing trained."""
    rows = []
    for cell in suite.cells:
        est = estimate(cell.recipe)  # per epoch, prediction and start-up: the same whatever the epochs
        epochs = budget_epochs(cell.recipe, suite.spec.budget.minutes, est) if suite.spec.budget.minutes is not None \
            else est["epochs"]
        est["epochs"] = epochs
        minutes = (est["fixed_s"] + est["predict_s"] + epochs * est["epoch_s"]) / 60
        state = "finished" if cell_done(cell) else ("started" if (cell.run_dir / "plan.json").is_file() else "to run")
        rows.append({"cell": cell.key, "dataset": cell.dataset, "entry": cell.entry, "seed": cell.seed,
                     "epochs": est["epochs"], "members": est["members"], "minutes": minutes, "state": state})
    return rows

