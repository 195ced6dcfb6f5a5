"""run(recipe): members trained, predicted with TTA, blended, a checked submission written, results recorded.

Each step is a plain function over the run directory, so `kit train`, `kit predict`, `kit submit` and
`kit run` share them, and several machines can train members of one run directory in parallel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import metrics as M
from kit.members import (Member, RunContext, chosen_tta, config_predictions, expand_members, member_done,
                         prepare_run, select_members, train_member)
from kit.predictions import Predictions, save_predictions
from kit.recipe import Recipe
from kit.rundir import write_json_atomic


@dataclass
class ConfigResult:
    config: str  # "<backbone>-s<seed>"
    backbone: str
    seed: int
    tta_scores: dict  # mode -> out-of-fold score (primary metric)
    oof: Predictions = field(repr=False)
    test: Predictions | None = field(repr=False)


@dataclass
class Summary:
    run_dir: Path
    metric: str
    tta: str
    configs: list[ConfigResult]
    methods: dict  # method -> kit.ensemble.MethodResult
    chosen: str | None
    submission: Path | None
    wall_time_s: float
    pending: list[str]  # members not finished yet (another machine may be training them)
    test_scores: dict | None = None  # public/private scores of the submission, where the answers are known


def all_members(ctx: RunContext) -> list[Member]:
    from kit.data import fold_ids
    return expand_members(ctx.recipe, fold_ids(ctx.folds))


def train(recipe: Recipe, members: str | None = None, *, resume: bool = True, progress_factory=None,
          log=print) -> tuple[RunContext, list[dict]]:
    """Train the selected members of the grid (all by default); finished members are skipped."""
    ctx = prepare_run(recipe)
    everyone = all_members(ctx)
    records = []
    for m in select_members(everyone, members):
        done = member_done(ctx.run_dir, m)
        if done is not None:
            log(f"member {m.index} {m.name}: finished before, skipped")
            records.append(done)
            continue
        log(f"member {m.index}/{len(everyone) - 1} {m.name}: training")
        rec = train_member(ctx, m, resume=resume, progress_factory=progress_factory,
                           on_epoch_end=_epoch_logger(m.recipe, log))
        log(f"member {m.name}: {_fmt_scores(rec, recipe.train.metric)} ({rec['wall_time_s']:.0f} s)")
        _record_member(ctx, rec)
        records.append(rec)
    return ctx, records


def _epoch_logger(recipe: Recipe, log):
    metric = recipe.train.metric

    def on_epoch_end(epoch: int, row: dict) -> None:
        log(f"  epoch {epoch + 1}/{recipe.train.epochs}  loss {row['train_loss']:.4f}  "
            f"val {metric} {row['val_' + metric]:.4f}  log_loss {row['val_log_loss']:.4f}  "
            f"{row['train_images_per_s']:.0f} img/s  {row['seconds']:.0f} s")
    return on_epoch_end


def _fmt_scores(rec: dict, metric: str) -> str:
    return ", ".join(f"{mode} {s[metric]:.4f}" for mode, s in rec["scores"].items()) + f" val {metric}"


def collect(ctx: RunContext) -> tuple[list[ConfigResult], str, list[str]]:
    """Out-of-fold and test predictions of each finished configuration, at the chosen TTA mode."""
    everyone = all_members(ctx)
    done = {m.name: member_done(ctx.run_dir, m) for m in everyone}
    pending = [n for n, d in done.items() if d is None]
    by_config: dict[str, list[Member]] = {}
    for m in everyone:
        by_config.setdefault(m.config, []).append(m)
    complete = {c: ms for c, ms in by_config.items() if all(done[m.name] for m in ms)}
    records = [done[m.name] for ms in complete.values() for m in ms]
    tta = chosen_tta(ctx.recipe, records) if records else ctx.recipe.tta.modes[0]
    metric = ctx.recipe.train.metric
    configs = []
    for config, ms in complete.items():
        tta_scores = {}
        for mode in ctx.recipe.tta.modes:
            oof, _ = config_predictions(ctx.run_dir, ms, mode)
            tta_scores[mode] = M.score(metric, oof.labels, oof.probs)
        oof, test = config_predictions(ctx.run_dir, ms, tta)
        configs.append(ConfigResult(config, ms[0].recipe.model.backbone, ms[0].seed, tta_scores, oof, test))
    return configs, tta, pending


def blend(ctx: RunContext, configs: list[ConfigResult]) -> tuple[dict, str | None]:
    """Score every blending method on out-of-fold predictions (with a nested estimate), save the blends."""
    from kit import ensemble as E
    r = ctx.recipe
    if not configs:
        return {}, None
    ids = configs[0].oof.ids
    oofs = [c.oof.reorder(ids) for c in configs]
    tests = [c.test for c in configs] if all(c.test is not None for c in configs) else None
    if r.ensemble.temperature:
        temps = [E.temperature_scale(o.probs, o.labels) for o in oofs]
        oofs = [Predictions(o.ids, E.apply_temperature(o.probs, t), o.classes, o.labels) for o, t in zip(oofs, temps)]
        if tests:
            tests = [Predictions(t.ids, E.apply_temperature(t.probs, T), t.classes) for t, T in zip(tests, temps)]
    if len(configs) == 1:
        return {}, None
    fold_of = dict(zip(ctx.sources.train.ids, ctx.folds))
    folds = np.array([fold_of[i] for i in ids]) if r.data.split == "kfold" else None
    methods = E.evaluate_methods(oofs, r.train.metric, folds=folds, methods=r.ensemble.methods, seed=r.data.seed)
    chosen = E.choose_method(methods, r.train.metric) if r.ensemble.choose == "auto" else r.ensemble.choose
    out = ctx.run_dir / "ensemble"
    for name, res in methods.items():
        save_predictions(Predictions(ids, E.apply_method([o.probs for o in oofs], res), oofs[0].classes,
                                     oofs[0].labels), out / f"oof_{name}.npz")
        if tests:
            test_ids = tests[0].ids
            probs = E.apply_method([t.reorder(test_ids).probs for t in tests], res)
            save_predictions(Predictions(test_ids, probs, tests[0].classes), out / f"test_{name}.npz")
    write_json_atomic(out / "report.json", {
        "metric": r.train.metric, "chosen": chosen, "members": [c.config for c in configs],
        "methods": {k: {"weights": v.weights, "oof_score": v.oof_score, "nested_score": v.nested_score}
                    for k, v in methods.items()}})
    return methods, chosen


def final_test_predictions(ctx: RunContext, configs: list[ConfigResult], chosen: str | None) -> Predictions | None:
    from kit.predictions import load_predictions
    if chosen is not None:
        f = ctx.run_dir / "ensemble" / f"test_{chosen}.npz"
        return load_predictions(f) if f.exists() else None
    best = best_config(configs, ctx.recipe.train.metric)
    return best.test if best else None


def best_config(configs: list[ConfigResult], metric: str) -> ConfigResult | None:
    best = None
    for c in configs:
        s = M.score(metric, c.oof.labels, c.oof.probs)
        if best is None or M.better(metric, s, best[0]):
            best = (s, c)
    return best[1] if best else None


def submit(ctx: RunContext, pred: Predictions, *, path=None, force: bool = False) -> Path | None:
    """Write the submission checked against the sample. An existing different file is kept unless force."""
    from kit.submit import make_submission, write_submission
    src = ctx.sources
    if src.sample_submission is None:
        return None
    sample_path = src.sample_submission_path
    if sample_path is None or not Path(sample_path).exists():  # built in memory (digits): keep a copy
        sample_path = ctx.run_dir / "sample_submission.csv"
        src.sample_submission.to_csv(sample_path, index=False)
    df = make_submission(pred, sample_path, fmt=ctx.recipe.submit.format)
    path = Path(path) if path else ctx.run_dir / ctx.recipe.submit.path
    if path.exists() and not force and path.read_text() == df.to_csv(index=False):
        return path  # the same submission again: nothing to replace
    return write_submission(df, path, overwrite=force)


def run(recipe: Recipe, *, resume: bool = True, force: bool = False, progress_factory=None, log=print) -> Summary:
    t0 = time.time()
    ctx, _ = train(recipe, resume=resume, progress_factory=progress_factory, log=log)
    return finish(ctx, force=force, t0=t0)


def finish(ctx: RunContext, *, force: bool = False, t0: float | None = None, path=None) -> Summary:
    """Everything after training: collect finished members, blend, submit, summarise, record."""
    t0 = t0 or time.time()
    configs, tta, pending = collect(ctx)
    methods, chosen = blend(ctx, configs)
    pred = final_test_predictions(ctx, configs, chosen)
    path = submit(ctx, pred, path=path, force=force) if pred is not None and not pending else None
    summary = Summary(ctx.run_dir, ctx.recipe.train.metric, tta, configs, methods, chosen, path,
                      time.time() - t0, pending)
    if path is not None:
        summary.test_scores = _score_and_record_submission(ctx, summary)
    write_json_atomic(ctx.run_dir / "summary.json", summary_dict(summary))
    _record_ensemble(ctx, summary)
    return summary


def _score_and_record_submission(ctx: RunContext, s: Summary) -> dict | None:
    """Record the submission; where the test answers are known (digits), score it like a competition site."""
    from kit.leaderboard import Entry, record_score, score_submission
    result = None
    solution = ctx.sources.test_solution
    base = dict(_base_entry(ctx), backbone="+".join(sorted({c.backbone for c in s.configs})),
                strategy=ctx.recipe.model.strategy, tta_mode=s.tta, blend_method=s.chosen)
    if solution is not None:
        sol_path = ctx.run_dir / "solution.csv"
        solution.to_csv(sol_path, index=False)
        result = score_submission(s.submission, sol_path, ctx.recipe.train.metric)
        val = s.methods[s.chosen].nested_score if s.chosen else best_config(s.configs, s.metric).tta_scores[s.tta]
        base.pop("metric")
        record_score(result, name=f"{ctx.recipe.name}:submission", url=ctx.recipe.leaderboard, score=val,
                     extra={"submission": str(s.submission)}, **base)
    else:
        _record(ctx, [Entry(kind="submission", name=f"{ctx.recipe.name}:submission", score=None,
                            extra={"submission": str(s.submission)}, **base)])
    return result


def summary_dict(s: Summary) -> dict:
    scores = [c.tta_scores[s.tta] for c in s.configs]
    best = best_config(s.configs, s.metric)
    d = {"metric": s.metric, "tta": s.tta, "wall_time_s": s.wall_time_s, "pending": s.pending,
         "submission": str(s.submission) if s.submission else None,
         "members": {c.config: c.tta_scores for c in s.configs},
         "member_mean": float(np.mean(scores)) if scores else None,
         "member_std": float(np.std(scores)) if scores else None,
         "best_member": best.config if best else None,
         "best_member_score": best.tta_scores[s.tta] if best else None,
         "methods": {k: {"oof": v.oof_score, "nested": v.nested_score} for k, v in s.methods.items()},
         "chosen": s.chosen, "test_scores": s.test_scores}
    if s.chosen and best:
        d["gain_oof"] = s.methods[s.chosen].oof_score - d["best_member_score"]
        d["gain_nested"] = s.methods[s.chosen].nested_score - d["best_member_score"]
    return d


# ------------------------------------------------------------------ leaderboard records

def _base_entry(ctx: RunContext) -> dict:
    from kit.recipe import recipe_hash
    r = ctx.recipe
    scheme = f"kfold{r.data.folds}" if r.data.split == "kfold" else "holdout"
    return dict(recipe_name=r.name, recipe_hash=recipe_hash(r), recipe=r.to_dict(), fold_scheme=scheme,
                run_dir=str(ctx.run_dir), metric=r.train.metric)


def _record(ctx: RunContext, entries) -> None:
    from kit.leaderboard import environment, record
    env = environment()
    for e in entries:
        e.versions, e.git_commit = env.get("versions", {}), env.get("git_commit")
    record(entries, url=ctx.recipe.leaderboard)


def _record_member(ctx: RunContext, rec: dict) -> None:
    from kit.leaderboard import Entry
    metric = ctx.recipe.train.metric
    base = dict(_base_entry(ctx), backbone=rec["backbone"], strategy=rec["strategy"], seed=rec["seed"],
                wall_time_s=rec["wall_time_s"], device=rec["device"])
    entries = [Entry(kind="member", name=rec["member"], score=rec["scores"]["none" if "none" in rec["scores"]
                     else next(iter(rec["scores"]))][metric], scores=rec["scores"].get("none", {}),
                     tta_mode="none", extra={"fold": rec["fold"], "best_epoch": rec["best_epoch"]}, **base)]
    for mode, scores in rec["scores"].items():
        if mode != "none":
            entries.append(Entry(kind="tta", name=rec["member"], score=scores[metric], scores=scores,
                                 tta_mode=mode, extra={"fold": rec["fold"]}, **base))
    _record(ctx, entries)


def _record_ensemble(ctx: RunContext, s: Summary) -> None:
    from kit.leaderboard import Entry
    if not s.methods:
        return
    base = dict(_base_entry(ctx), backbone="+".join(sorted({c.backbone for c in s.configs})),
                strategy=ctx.recipe.model.strategy, tta_mode=s.tta, wall_time_s=s.wall_time_s)
    _record(ctx, [Entry(kind="ensemble", name=f"ensemble:{name}", score=res.nested_score, blend_method=name,
                        scores={"oof": res.oof_score, "nested": res.nested_score},
                        extra={"members": [c.config for c in s.configs], "weights": res.weights.tolist(),
                               "ensemble_size": int(np.count_nonzero(res.weights > 1e-6)),
                               "chosen": name == s.chosen}, **base)
                  for name, res in s.methods.items()])


def predict(run_dir, modes: list[str] | None = None, log=print) -> dict:
    """`kit predict RUN --tta MODE`: predict every finished member of a run with these TTA modes
    (default: the recipe's), saving the probabilities per split and mode; returns val scores per member."""
    from kit.members import repredict_member
    from kit.recipe import TTA_MODES, RecipeError
    from kit.runtime import resolve_device
    recipe = load_run_recipe(run_dir)
    modes = modes or list(recipe.tta.modes)
    bad = [m for m in modes if m not in TTA_MODES]
    if bad:
        raise RecipeError(f"--tta {bad[0]} is not a TTA mode; valid: {', '.join(TTA_MODES)}")
    ctx = prepare_run(recipe)
    device = resolve_device(recipe.train.device)
    out = {}
    for m in all_members(ctx):
        if member_done(ctx.run_dir, m) is None:
            log(f"member {m.name}: not finished, skipped")
            continue
        rec = repredict_member(ctx, m, modes, device)
        _record_member(ctx, {**rec, "scores": {k: v for k, v in rec["scores"].items() if k in modes}})
        out[m.name] = {k: v[recipe.train.metric] for k, v in rec["scores"].items()}
    return out


def load_run_recipe(run_dir) -> Recipe:
    """The resolved recipe saved in a run directory, pointing at that directory wherever it is called from
    (its output_dir may be relative to where the run started)."""
    from kit.recipe import RecipeError, load_recipe
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise RecipeError(f"{run_dir} is not a run directory (no recipe.yaml); pass runs/<name>")
    recipe = load_recipe(recipe_file, [("output_dir", str(run_dir.parent))])  # output_dir is not hashed
    if recipe.name != run_dir.name:
        raise RecipeError(f"{run_dir} holds the run named {recipe.name!r} (its recipe.yaml); "
                          f"rename the folder back to {recipe.name}")
    return recipe
