"""One trial: its recipe, the objective that trains it, and the callback that records it."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kit.recipe import Recipe, recipe_hash
from kit.tune._space import suggest
from kit.tune._storage import study_dir


def trial_recipe(recipe: Recipe, params: dict, number: int, study_name: str | None = None) -> Recipe:
    """The recipe of one trial: the sampled values set, one seed, its own run directory trial_NNNN."""
    over = dict(params, name=f"trial_{number:04d}", output_dir=str(study_dir(recipe, study_name) / "trials"))
    over["ensemble.seeds"] = recipe.seeds[:1]
    return recipe.with_overrides(over, source=f"trial {number} of recipe {recipe.name!r}")


def _objective(recipe: Recipe, name: str):
    from kit.choice import choose_tta
    from kit.context import prepare_run
    from kit.member_train import train_member
    from kit.pool import config_oofs
    metric = recipe.train.metric

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = suggest(trial, recipe.search.params)
            r = trial_recipe(recipe, params, trial.number, name)
            trial.set_user_attr("run_dir", str(r.run_dir))
            ctx = prepare_run(r)
            # first backbone, first seed, the searched fold
            member = next(m for m in ctx.plan.members if m.backbone_index == 0 and m.fold == r.search.fold)

            def report(epoch: int, row: dict) -> None:
                trial.report(row[f"val_{metric}"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val {metric} {row[f'val_{metric}']:.4f} at epoch {epoch + 1}")

            rec = train_member(ctx, member, resume=False, on_epoch_end=report)
        except optuna.TrialPruned:
            raise
        except BaseException as e:
            trial.set_user_attr("fail_reason", _fail_reason(e))
            raise
        # one member's pooled out-of-fold rows are its fold's: the same rule as the run summary's
        tta = choose_tta(config_oofs(r.run_dir, [member], {member.name: rec}), metric, member.recipe.tta.mode,
                         ctx.task.metrics).name
        trial.set_user_attr("member", member.name)
        trial.set_user_attr("tta", tta)
        trial.set_user_attr("scores", rec["scores"][tta])
        trial.set_user_attr("device", rec["device"])
        value = rec["scores"][tta][metric]
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"validation {metric} is {value}")
        return value  # NaN: Optuna fails the trial and goes on
    return objective


def _fail_reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    import torch
    from kit.errors import OutOfMemory
    from kit.runtime import OUT_OF_MEMORY
    if isinstance(e, (OUT_OF_MEMORY, OutOfMemory)):
        torch.cuda.empty_cache()  # the next trial starts from an empty cache
        return (f"out of GPU memory ({str(e).splitlines()[0]}); search smaller train.batch_size or "
                f"augment.input_size, or set train.accum_steps")
    return f"{type(e).__name__}: {e}"[:2000]


def _after_trial(recipe: Recipe, name: str, log, env: dict):
    """Study callback: tidy the trial's directory, record it on the leaderboard, log one line."""
    metric = recipe.train.metric

    def callback(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        run_dir = Path(t.user_attrs.get("run_dir", study_dir(recipe, name) / "trials" / f"trial_{t.number:04d}"))
        # Checkpoints: last.pt only resumes an unfinished member; a stopped trial is never resumed (a retry gets
        # a new number), so only complete trials keep best.pt, for kit predict with more TTA modes.
        for f in run_dir.glob("members/*/**/*.pt"):  # also a feature head's head_training/last.pt
            if f.name == "last.pt" or t.state != TrialState.COMPLETE:
                f.unlink(missing_ok=True)
        epochs = len(t.intermediate_values)
        value = f"{t.value:.4f}" if t.value is not None else t.user_attrs.get("fail_reason", "")
        log(f"trial {t.number} {t.state.name.lower()} after {epochs} epochs: {metric} {value}  "
            + " ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
        try:
            _record_trial(recipe, name, t, run_dir, env)
        except Exception as e:  # the leaderboard is a record of the study, not a reason to stop it
            log(f"trial {t.number}: not recorded on the leaderboard: {type(e).__name__}: {e}")
    return callback


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _record_trial(recipe: Recipe, name: str, t, run_dir: Path, env: dict) -> None:
    from kit.leaderboard import Entry, record
    r = trial_recipe(recipe, t.params, t.number, name)
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    extra = {"trial": t.number, "params": t.params, "state": t.state.name.lower(), "study": name,
             "fold": r.search.fold, "epochs": len(t.intermediate_values)}
    if "fail_reason" in t.user_attrs:
        extra["fail_reason"] = t.user_attrs["fail_reason"]
    entry = Entry(kind="trial", name=f"trial_{t.number}", metric=recipe.train.metric,
                  score=t.value if t.state == TrialState.COMPLETE else None, scores=t.user_attrs.get("scores", {}),
                  recipe_name=recipe.name, recipe_hash=recipe_hash(r), recipe=r.to_dict(),
                  backbone=r.model.backbone, strategy=r.model.strategy, seed=r.seeds[0],
                  fold_scheme=f"kfold{r.data.folds}" if r.data.split == "kfold" else "holdout",
                  tta_mode=t.user_attrs.get("tta"), run_dir=str(run_dir), wall_time_s=duration,
                  device=t.user_attrs.get("device"), versions=env.get("versions", {}),
                  git_commit=env.get("git_commit"), extra=extra)
    record([entry], url=recipe.leaderboard)
