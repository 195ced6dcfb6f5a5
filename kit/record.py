"""A run's results on the leaderboard: one row per member (its plain prediction), per TTA mode, per blending
method and per submission, each with the recipe, its hash and the plan's environment choices.

Recording is idempotent (kit.leaderboard.record replaces the row with the same run, kind, name, TTA mode and
blend): re-running `kit run`, `kit submit` or `kit predict` never counts a result twice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kit.errors import KitError, KitWarning, UnsafeFileError


def _base_entry(ctx) -> dict:
    r = ctx.recipe
    scheme = f"kfold{r.data.folds}" if r.data.split == "kfold" else "holdout"
    return dict(recipe_name=r.name, recipe_hash=ctx.plan.recipe_hash, recipe=r.to_dict(), fold_scheme=scheme,
                run_dir=str(ctx.run_dir), metric=r.train.metric)


def environment_choices(ctx, members=None) -> dict:
    """The numerics-changing choices of the plan that produced a row: threads, memory format(s), and
    depthwise_grad where depthwise weight gradients were taken tap by tap (kit.models.depthwise, CPU only)."""
    members = members if members is not None else ctx.plan.members
    formats = sorted({"channels_last" if m.channels_last else "contiguous" for m in members})
    env = {"threads": ctx.plan.environment.get("threads"), "memory_format": "+".join(formats)}
    taps = sum(bool(m.depthwise_taps) for m in members)
    if taps:  # the plan takes them on the CPU only
        env["depthwise_grad"] = "taps" if taps == len(members) else f"taps for {taps} of {len(members)} members"
    return env


PENDING_DIR = "leaderboard_pending"  # rows that could not be recorded yet, one JSON file per attempt


def _record(ctx, entries) -> None:
    """Record `entries`, after any rows this run kept from an earlier attempt. A leaderboard that cannot take them
    (a damaged database, a server down) stops nothing: the rows are kept in the run directory (PENDING_DIR) and
    recorded by the next command that records for this run, never lost; a KitWarning says so."""
    from kit.leaderboard import environment
    env = environment()
    for e in entries:
        e.versions, e.git_commit = env.get("versions", {}), env.get("git_commit")
    try:
        record_pending(ctx.run_dir, ctx.recipe.leaderboard)
        _store(entries, ctx.recipe.leaderboard)
    except KitError as err:
        _keep(ctx.run_dir, entries, err)


def _store(entries, url) -> None:
    from kit.leaderboard import record
    if entries:
        record(entries, url=url)


def _keep(run_dir, entries, err: Exception) -> None:
    import json
    import time
    import uuid
    import warnings
    from dataclasses import asdict
    from kit.leaderboard._store import _json_default
    from kit.rundir import write_text_atomic
    folder = Path(run_dir) / PENDING_DIR
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    if entries:
        write_text_atomic(path, json.dumps([asdict(e) for e in entries], default=_json_default))
    waiting = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    warnings.warn(KitWarning(f"{err}. The run goes on: its {len(entries)} new leaderboard row(s) are kept in {folder} "
                             f"({waiting} file(s) waiting) and recorded by the next kit run / kit submit / kit predict "
                             f"of {run_dir} once the leaderboard works"), stacklevel=3)


def record_pending(run_dir, url) -> int:
    """Record the rows an earlier command of this run kept (PENDING_DIR), oldest first, removing each file once
    recorded; returns how many rows. A LeaderboardError (the database still down) leaves them in place."""
    from kit.leaderboard import Entry
    from kit.readers import read_json
    folder = Path(run_dir) / PENDING_DIR
    n = 0
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        rows = read_json(f, schema=[dict], fix=f"remove it (its rows are then not recorded) or restore it")
        try:
            entries = [Entry(**row) for row in rows]
        except (TypeError, ValueError) as e:
            raise UnsafeFileError(f"{f} does not hold leaderboard rows kit kept ({str(e)[:200]}); remove it (its rows "
                                  f"are then not recorded)") from None
        _store(entries, url)
        n += len(entries)
        try:  # recorded; a file that cannot be removed (a read-only run) is recorded again next time: idempotent
            f.unlink()
        except OSError:
            pass
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass
    return n


def record_member(ctx, rec: dict) -> None:
    """A member row (TTA mode none) and one tta row per other mode it has predicted."""
    from kit.leaderboard import Entry
    metric = ctx.recipe.train.metric
    member = next(m for m in ctx.plan.members if m.name == rec["member"])
    base = dict(_base_entry(ctx), backbone=rec["backbone"], strategy=rec["strategy"], seed=rec["seed"],
                wall_time_s=rec["wall_time_s"], device=rec["device"])
    env = environment_choices(ctx, [member])
    entries = []
    if rec.get("refit_of"):  # no validation score: it trained on every labelled image; apart from the ranked ones
        entries.append(Entry(kind="member", name=rec["member"], score=None, tta_mode="none",
                             extra={"refit_of": rec["refit_of"], "epochs": rec["epochs"], "env": env}, **base))
    for mode, scores in rec["scores"].items():
        entries.append(Entry(kind="member" if mode == "none" else "tta", name=rec["member"], score=scores[metric],
                             scores=scores, tta_mode=mode,
                             extra={"fold": rec["fold"], "best_epoch": rec["best_epoch"], "env": env,
                                    "round": member.round}, **base))
    _record(ctx, entries)


def _ensemble_base(ctx, s) -> dict:
    return dict(_base_entry(ctx), backbone="+".join(sorted({c.backbone for c in s.configs})),
                strategy="+".join(sorted({m.recipe.model.strategy for m in ctx.plan.members})), tta_mode=s.tta)


def record_ensemble(ctx, s, suffix: str = "") -> None:
    """One row per blending method; `suffix` (':round0') names the blend of an earlier pseudo-label round."""
    from kit.leaderboard import Entry
    if not s.methods:
        return
    base = dict(_ensemble_base(ctx, s), wall_time_s=s.wall_time_s)
    env = environment_choices(ctx)
    _record(ctx, [Entry(kind="ensemble", name=f"ensemble:{name}{suffix}", score=res.nested_score, blend_method=name,
                        scores={"oof": res.oof_score, "nested": res.nested_score},
                        extra={"members": [c.config for c in s.configs], "weights": res.weights.tolist(),
                               "ensemble_size": int(np.count_nonzero(res.weights > 1e-6)),
                               "chosen": name == s.chosen, "env": env}, **base)
                  for name, res in s.methods.items()])


def record_submission(ctx, s) -> dict | None:
    """Record the submission; where the test answers are known (digits), score it like a competition site."""
    from kit.leaderboard import Entry, score_entry, score_submission
    from kit.rundir import write_if_changed
    result = None
    solution = ctx.sources.test_solution
    base = dict(_ensemble_base(ctx, s), blend_method=s.chosen)
    extra = {"submission": str(s.submission), "env": environment_choices(ctx)}
    if solution is not None:
        sol_path = ctx.run_dir / "solution.csv"
        write_if_changed(sol_path, solution.to_csv(index=False))
        result = score_submission(s.submission, sol_path, ctx.recipe.train.metric)
        base.pop("metric")
        _record(ctx, [score_entry(result, name=f"{ctx.recipe.name}:submission", score=s.validation_score(),
                                  extra=extra, **base)])
    else:
        _record(ctx, [Entry(kind="submission", name=f"{ctx.recipe.name}:submission", score=None, extra=extra,
                            **base)])
    return result
