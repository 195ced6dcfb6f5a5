"""A run's results on the leaderboard: one row per member (its plain prediction), per TTA mode, per blending
method and per submission, each with the recipe, its hash and the plan's environment choices.

Recording is idempotent (kit.leaderboard.record replaces the row with the same run, kind, name, TTA mode and
blend): re-running `kit run`, `kit submit` or `kit predict` never counts a result twice.
"""
from __future__ import annotations

import numpy as np


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


def _record(ctx, entries) -> None:
    from kit.leaderboard import environment, record
    env = environment()
    for e in entries:
        e.versions, e.git_commit = env.get("versions", {}), env.get("git_commit")
    record(entries, url=ctx.recipe.leaderboard)


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
    from kit.leaderboard import Entry, record_score, score_submission
    result = None
    solution = ctx.sources.test_solution
    base = dict(_ensemble_base(ctx, s), blend_method=s.chosen)
    extra = {"submission": str(s.submission), "env": environment_choices(ctx)}
    if solution is not None:
        sol_path = ctx.run_dir / "solution.csv"
        solution.to_csv(sol_path, index=False)
        result = score_submission(s.submission, sol_path, ctx.recipe.train.metric)
        base.pop("metric")
        record_score(result, name=f"{ctx.recipe.name}:submission", url=ctx.recipe.leaderboard,
                     score=s.validation_score(), extra=extra, **base)
    else:
        _record(ctx, [Entry(kind="submission", name=f"{ctx.recipe.name}:submission", score=None, extra=extra,
                            **base)])
    return result
