"""run(recipe): members trained, predicted with TTA, blended, a checked submission written, results recorded.

Each step is a plain function over the run directory and its plan (kit.plan), so `kit train`, `kit predict`,
`kit submit` and `kit run` share them, and several machines can train members of one run directory in parallel.
The steps live a layer below, each in its module: opening a run (kit.context), training a member
(kit.member_train, through kit.executor), its predictions (kit.member_predict), the results and blends
(kit.results), the leaderboard rows (kit.record).
"""
from __future__ import annotations

import time
from pathlib import Path

from kit.context import (RunContext, load_recipe_or_run, load_run_recipe, member_done,  # noqa: F401 (API)
                         prepare_run, select_members)
from kit.errors import RecipeError, RunDirError
from kit.executor import check_executor, train_members
from kit.plan import MemberPlan
from kit.predictions import Predictions
from kit.recipe import TTA_MODES, Recipe
from kit.record import record_ensemble, record_member, record_submission
from kit.report import REPORT_FILE, read_report
from kit.results import (ConfigResult, Summary, best_config, blend, collect,  # noqa: F401 (API)
                         final_test_predictions, summary_dict)
from kit.rundir import write_if_changed, write_json_if_changed


def all_members(ctx: RunContext) -> list[MemberPlan]:
    return list(ctx.plan.members)


def train(recipe: Recipe, members: str | None = None, *, resume: bool = True, progress_factory=None,
          log=print, executor: str = "local", address: str | None = None) -> tuple[RunContext, list[dict]]:
    """Train the selected members of the plan (all by default), here or as Ray tasks (kit.executor); finished
    members are skipped."""
    from kit import distributed
    check_executor(executor, address)  # before the run directory is opened
    if distributed.current() is not None and executor != "local":
        raise RecipeError(f"--executor {executor} under torchrun: torchrun already spreads one member over its "
                          f"processes; drop --executor (or run Ray without torchrun)")
    if distributed.is_main():  # under torchrun rank 0 opens the run first; the others then reload its plan
        ctx = prepare_run(recipe)
        distributed.barrier()
    else:
        distributed.barrier()
        ctx = prepare_run(recipe, write=False)
    if ctx.bad_images:
        log(f"{len(ctx.bad_images)} bad images left out (data.bad_images: skip): {ctx.run_dir / 'bad_images.csv'}")
    return ctx, train_members(ctx, select_members(all_members(ctx), members), executor, address, resume=resume,
                              progress_factory=progress_factory, log=log)


def submit(ctx: RunContext, pred: Predictions, *, path=None, force: bool = False) -> Path | None:
    """Write the submission checked against the sample. An existing different file is kept unless force."""
    from kit.submit import make_submission, write_submission
    src = ctx.sources
    if src.sample_submission is None:
        if src.test is None:
            return None
        # a test folder without a sample submission: its ids (file names) in the folder's order, under the labels
        # CSV's id and target column names (one column per class or label where the task submits so)
        data = ctx.recipe.data
        df = make_submission(pred.reorder(src.test.ids), None, fmt=ctx.recipe.submit.format, task=ctx.task,
                             id_column=data.id_column, label_column=data.label_column)
    else:
        sample_path = src.sample_submission_path
        if sample_path is None or not Path(sample_path).exists():  # built in memory (digits): keep a copy
            sample_path = write_if_changed(ctx.run_dir / "sample_submission.csv",
                                           src.sample_submission.to_csv(index=False))
        df = make_submission(pred, sample_path, fmt=ctx.recipe.submit.format, task=ctx.task)
    if not path:  # submit.path, inside the run directory
        path = ctx.run_dir / ctx.recipe.submit.path
        path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(path)
    if path.is_file() and path.read_text() == df.to_csv(index=False):
        return path  # the same submission again: nothing to replace
    return write_submission(df, path, overwrite=force)


def run(recipe: Recipe, *, resume: bool = True, force: bool = False, progress_factory=None, log=print,
        executor: str = "local", address: str | None = None) -> Summary:
    t0 = time.time()
    ctx, _ = train(recipe, resume=resume, progress_factory=progress_factory, log=log, executor=executor,
                   address=address)
    return finish(ctx, force=force, t0=t0)


def finish(ctx: RunContext, *, force: bool = False, t0: float | None = None, path=None) -> Summary:
    """Everything after training: collect the members, blend, submit, summarise, record. Refuses, before
    writing or recording anything, while a member is unfinished."""
    t0 = t0 or time.time()
    pending = [m for m in ctx.plan.members if member_done(ctx.run_dir, m) is None]
    if pending:
        ids = ",".join(str(m.index) for m in pending)
        raise RunDirError(f"{len(pending)} of {len(ctx.plan.members)} members are not finished "
                          f"({', '.join(m.name for m in pending[:3])}{', ...' if len(pending) > 3 else ''}); "
                          f"train them with: kit train {ctx.run_dir} --member {ids} --resume")
    configs, _ = collect(ctx)
    methods, chosen, why = blend(ctx, configs)
    pred = final_test_predictions(ctx, configs, chosen)
    path = submit(ctx, pred, path=path, force=force) if pred is not None else None
    report = ctx.run_dir / "ensemble" / REPORT_FILE
    decision = read_report(report, f"blend the run again: kit submit {ctx.run_dir}").decision if report.is_file() \
        else None
    summary = Summary(ctx.run_dir, ctx.recipe.train.metric, configs, methods, chosen, path, time.time() - t0, [],
                      bad_images=len(ctx.bad_images), chosen_why=why, decision=decision)
    if path is not None:
        summary.test_scores = record_submission(ctx, summary)
    write_json_if_changed(ctx.run_dir / "summary.json", summary_dict(summary), ignore=("wall_time_s",))
    record_ensemble(ctx, summary)
    return summary


def predict(run_dir, modes: list[str] | None = None, log=print) -> dict:
    """`kit predict RUN --tta MODE`: predict every finished member of a run with these TTA modes (default: its
    planned ones), saving the probabilities per split and mode; returns val scores per member. `kit submit` then
    considers the new modes too."""
    from kit.member_predict import repredict_member
    from kit.runtime import resolve_device
    recipe = load_run_recipe(run_dir)
    bad = [m for m in (modes or []) if m not in TTA_MODES]
    if bad:
        raise RecipeError(f"--tta {bad[0]} is not a TTA mode; valid: {', '.join(TTA_MODES)}")
    ctx = prepare_run(recipe)
    device = resolve_device(recipe.train.device)
    out = {}
    for m in all_members(ctx):
        if member_done(ctx.run_dir, m) is None:
            log(f"member {m.name}: not finished, skipped")
            continue
        rec = repredict_member(ctx, m, list(modes or m.tta_modes), device)
        record_member(ctx, rec)
        out[m.name] = {k: v[ctx.recipe.train.metric] for k, v in rec["scores"].items()}
    return out
