"""run(recipe): members trained, predicted with TTA, blended, a checked submission written, results recorded.

Each step is a plain function over the run directory and its plan (kit.plan), so `kit train`, `kit predict`,
`kit submit` and `kit run` share them, and several machines can train members of one run directory in parallel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import metrics as M
from kit.errors import RecipeError, RunDirError
from kit.members import (MemberPlan, RunContext, choose_tta, config_oofs, config_predictions, member_done,
                         prepare_run, select_members)
from kit.predictions import Predictions, save_predictions
from kit.recipe import TTA_MODES, Recipe
from kit.rundir import write_json_atomic


@dataclass
class ConfigResult:
    config: str  # "<backbone>-s<seed>"
    backbone: str
    seed: int
    tta_scores: dict  # mode -> pooled out-of-fold score (primary metric), every mode its members predicted
    tta: str  # the mode chosen by kit.members.choose_tta
    oof: Predictions = field(repr=False)
    test: Predictions | None = field(repr=False)
    refits: tuple = ()  # data.refit: the members trained on every labelled image whose mean is `test`
    tta_why: str = ""  # why choose_tta chose `tta`


@dataclass
class Summary:
    run_dir: Path
    metric: str
    configs: list[ConfigResult]
    methods: dict  # method -> kit.ensemble.MethodResult
    chosen: str | None
    submission: Path | None
    wall_time_s: float
    pending: list[str]  # members not finished yet (another machine may be training them)
    test_scores: dict | None = None  # public/private scores of the submission, where the answers are known
    bad_images: int = 0

    @property
    def tta(self) -> str:
        """The chosen TTA mode, or the modes of the configurations joined by '+' when they differ."""
        return "+".join(dict.fromkeys(c.tta for c in self.configs)) or "none"


def all_members(ctx: RunContext) -> list[MemberPlan]:
    return list(ctx.plan.members)


def train(recipe: Recipe, members: str | None = None, *, resume: bool = True, progress_factory=None,
          log=print, executor: str = "local", address: str | None = None) -> tuple[RunContext, list[dict]]:
    """Train the selected members of the plan (all by default), here or as Ray tasks (kit.executor); finished
    members are skipped."""
    from kit import distributed
    from kit.executor import check_executor, train_members
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


def epoch_logger(recipe: Recipe, log):
    metric = recipe.train.metric

    def on_epoch_end(epoch: int, row: dict) -> None:
        if "val_" + metric in row:
            head = f"epoch {epoch + 1}/{recipe.train.epochs}"
            val = f"val {metric} {row['val_' + metric]:.4f}  log_loss {row['val_log_loss']:.4f}  "
        else:  # a refit: its epochs are those its validated twin kept, nothing is validated
            head, val = f"epoch {epoch + 1} (refit)", ""
        log(f"  {head}  loss {row['train_loss']:.4f}  {val}"
            f"{row.get('train_images_per_s', 0):.0f} img/s  {row.get('seconds', 0):.0f} s")
    return on_epoch_end


def format_scores(rec: dict, metric: str) -> str:
    if rec.get("refit_of"):
        return f"refitted on every labelled image for {rec['epochs']} epochs (the epochs {rec['refit_of']} kept)"
    return ", ".join(f"{mode} {s[metric]:.4f}" for mode, s in rec["scores"].items()) + f" val {metric}"


def collect(ctx: RunContext, *, need_test: bool = True, round: int | None = None
            ) -> tuple[list[ConfigResult], list[str]]:
    """Each finished configuration's out-of-fold and test predictions at its chosen TTA mode (kit.members.choose_tta
    over the pooled out-of-fold rows of every mode its members predicted), and the members not finished, of one
    pseudo-label round (default: the last)."""
    done = {m.name: member_done(ctx.run_dir, m) for m in ctx.plan.members}
    pending = [n for n, d in done.items() if d is None]
    metric = ctx.recipe.train.metric
    need_test = need_test and ctx.sources.test is not None
    configs = []
    for config, ms in ctx.plan.configs(round).items():
        if not all(done[m.name] for m in ms):
            continue
        oofs = config_oofs(ctx.run_dir, ms, {m.name: done[m.name] for m in ms})
        tta_scores = {mode: M.score(metric, o.labels, o.probs) for mode, o in oofs.items()}
        fixed = ms[0].recipe.tta.mode
        if fixed != "auto" and fixed not in tta_scores:
            raise RunDirError(f"tta.mode {fixed} was not predicted for {config}; run kit predict {ctx.run_dir} "
                              f"--tta {fixed}")
        tta, why = choose_tta(oofs, metric, fixed)
        refits = ctx.plan.refits(config)
        oof, test = config_predictions(ctx.run_dir, ms, tta, need_test=need_test, refits=refits)
        configs.append(ConfigResult(config, ms[0].recipe.model.backbone, ms[0].seed, tta_scores, tta, oof, test,
                                    tuple(m.name for m in refits), why))
    return configs, pending


def blend(ctx: RunContext, configs: list[ConfigResult], out: Path | None = None) -> tuple[dict, str | None]:
    """Score every blending method (the best single member among them) on out-of-fold predictions with a nested
    estimate, save the blends in `out` (default runs/<name>/ensemble); the chosen one by ensemble.choose (auto:
    best nested score)."""
    from kit import ensemble as E
    r = ctx.recipe
    out = out or ctx.run_dir / "ensemble"
    if len(configs) < 2:
        return {}, None
    ids = configs[0].oof.ids
    oofs = [c.oof.reorder(ids) for c in configs]
    tests = [c.test for c in configs] if all(c.test is not None for c in configs) else None
    temps = None
    if r.ensemble.temperature:
        temps = [E.temperature_scale(o.probs, o.labels) for o in oofs]
        oofs = [Predictions(o.ids, E.apply_temperature(o.probs, t), o.classes, o.labels) for o, t in zip(oofs, temps)]
        if tests:
            tests = [Predictions(t.ids, E.apply_temperature(t.probs, T), t.classes) for t, T in zip(tests, temps)]
    fold_of = dict(zip(ctx.sources.train.ids, ctx.folds))
    folds = np.array([fold_of[i] for i in ids]) if r.data.split == "kfold" else None
    methods = E.evaluate_methods(oofs, r.train.metric, folds=folds, methods=r.ensemble.methods, seed=r.data.seed)
    chosen = E.choose_method(methods, r.train.metric) if r.ensemble.choose == "auto" else r.ensemble.choose
    for name, res in methods.items():
        save_predictions(Predictions(ids, E.apply_method([o.probs for o in oofs], res), oofs[0].classes,
                                     oofs[0].labels), out / f"oof_{name}.npz")
        if tests:
            test_ids = tests[0].ids
            probs = E.apply_method([t.reorder(test_ids).probs for t in tests], res)
            save_predictions(Predictions(test_ids, probs, tests[0].classes), out / f"test_{name}.npz")
    write_json_atomic(out / "report.json", {
        "metric": r.train.metric, "chosen": chosen, "members": [c.config for c in configs],
        "tta": {c.config: c.tta for c in configs}, "temperatures": temps if r.ensemble.temperature else None,
        "methods": {k: {"weights": v.weights, "oof_score": v.oof_score, "nested_score": v.nested_score,
                        **({"params": v.params} if v.params else {})} for k, v in methods.items()}})
    return methods, chosen


def pseudo_round_dir(run_dir, round: int) -> Path:
    from kit.pseudo import round_dir
    return round_dir(run_dir, round)


def blend_round(ctx: RunContext, round: int, log=print) -> dict:
    """Blend pseudo-label round `round` (every member finished) into ensemble/round<r>/: the teacher of the next
    round, recorded on the leaderboard as ensemble:<method>:round<r>, so that the gain per round is visible."""
    from kit.record import record_ensemble
    pending = [m.name for m in ctx.plan.members if m.round == round and member_done(ctx.run_dir, m) is None]
    if pending:
        raise RunDirError(f"round {round + 1} of pseudo-labels learns from round {round}, whose members "
                          f"{', '.join(pending[:3])} are not finished; train them first: kit train {ctx.run_dir}")
    configs, _ = collect(ctx, round=round)
    out = pseudo_round_dir(ctx.run_dir, round)
    methods, chosen = blend(ctx, configs, out)
    best = best_config(configs, ctx.recipe.train.metric)
    report = {"round": round, "chosen": chosen, "members": [c.config for c in configs] if chosen else [best.config],
              "tta": {c.config: c.tta for c in configs}, "best_member": best.config,
              "best_member_score": best.tta_scores[best.tta],
              "methods": {k: {"weights": v.weights, "oof_score": v.oof_score, "nested_score": v.nested_score,
                              **({"params": v.params} if v.params else {})} for k, v in methods.items()}}
    write_json_atomic(out / "report.json", report)
    summary = Summary(ctx.run_dir, ctx.recipe.train.metric, configs, methods, chosen, None, 0.0, [])
    record_ensemble(ctx, summary, suffix=f":round{round}")
    score = methods[chosen].nested_score if chosen else report["best_member_score"]
    log(f"round {round}: {chosen or 'best member ' + best.config} {ctx.recipe.train.metric} {score:.4f} "
        f"(nested); the next round learns from it")
    return report


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
        s = c.tta_scores[c.tta]
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


def run(recipe: Recipe, *, resume: bool = True, force: bool = False, progress_factory=None, log=print,
        executor: str = "local", address: str | None = None) -> Summary:
    t0 = time.time()
    ctx, _ = train(recipe, resume=resume, progress_factory=progress_factory, log=log, executor=executor,
                   address=address)
    return finish(ctx, force=force, t0=t0)


def finish(ctx: RunContext, *, force: bool = False, t0: float | None = None, path=None) -> Summary:
    """Everything after training: collect the members, blend, submit, summarise, record. Refuses, before
    writing or recording anything, while a member is unfinished."""
    from kit.record import record_ensemble, record_submission
    t0 = t0 or time.time()
    pending = [m for m in ctx.plan.members if member_done(ctx.run_dir, m) is None]
    if pending:
        ids = ",".join(str(m.index) for m in pending)
        raise RunDirError(f"{len(pending)} of {len(ctx.plan.members)} members are not finished "
                          f"({', '.join(m.name for m in pending[:3])}{', ...' if len(pending) > 3 else ''}); "
                          f"train them with: kit train {ctx.run_dir} --member {ids} --resume")
    configs, _ = collect(ctx)
    methods, chosen = blend(ctx, configs)
    pred = final_test_predictions(ctx, configs, chosen)
    path = submit(ctx, pred, path=path, force=force) if pred is not None else None
    summary = Summary(ctx.run_dir, ctx.recipe.train.metric, configs, methods, chosen, path, time.time() - t0, [],
                      bad_images=len(ctx.bad_images))
    if path is not None:
        summary.test_scores = record_submission(ctx, summary)
    write_json_atomic(ctx.run_dir / "summary.json", summary_dict(summary))
    record_ensemble(ctx, summary)
    return summary


def summary_dict(s: Summary) -> dict:
    scores = [c.tta_scores[c.tta] for c in s.configs]
    best = best_config(s.configs, s.metric)
    d = {"metric": s.metric, "tta": s.tta, "tta_by_member": {c.config: c.tta for c in s.configs},
         "tta_why": {c.config: c.tta_why for c in s.configs},
         "wall_time_s": s.wall_time_s, "pending": s.pending,
         "submission": str(s.submission) if s.submission else None,
         "members": {c.config: c.tta_scores for c in s.configs},
         "refits": {c.config: list(c.refits) for c in s.configs if c.refits},
         "member_mean": float(np.mean(scores)) if scores else None,
         "member_std": float(np.std(scores)) if scores else None,
         "best_member": best.config if best else None,
         "best_member_score": best.tta_scores[best.tta] if best else None,
         "methods": {k: {"oof": v.oof_score, "nested": v.nested_score} for k, v in s.methods.items()},
         "chosen": s.chosen, "test_scores": s.test_scores, "bad_images": s.bad_images,
         "rounds": _round_scores(s.run_dir)}
    if s.chosen and best:
        d["gain_oof"] = s.methods[s.chosen].oof_score - d["best_member_score"]
        d["gain_nested"] = s.methods[s.chosen].nested_score - d["best_member_score"]
        d["best_member_kept"] = s.chosen == "best"
    return d


def _round_scores(run_dir) -> list[dict]:
    """Earlier pseudo-label rounds' validation scores (their blend's nested score, or the best member's)."""
    import json
    out = []
    for f in sorted(Path(run_dir).glob("ensemble/round*/report.json")):
        r = json.loads(f.read_text())
        score = r["methods"][r["chosen"]]["nested_score"] if r.get("chosen") else r["best_member_score"]
        out.append({"round": r["round"], "chosen": r.get("chosen"), "score": score})
    return out


def validation_score(s: Summary) -> float | None:
    """The submission's validation estimate: the chosen blend's nested score, or the best member's score."""
    if s.chosen:
        return s.methods[s.chosen].nested_score
    best = best_config(s.configs, s.metric)
    return best.tta_scores[best.tta] if best else None


def predict(run_dir, modes: list[str] | None = None, log=print) -> dict:
    """`kit predict RUN --tta MODE`: predict every finished member of a run with these TTA modes (default: its
    planned ones), saving the probabilities per split and mode; returns val scores per member. `kit submit` then
    considers the new modes too."""
    from kit.members import repredict_member
    from kit.record import record_member
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
        out[m.name] = {k: v[recipe.train.metric] for k, v in rec["scores"].items()}
    return out


def load_run_recipe(run_dir, overrides=()) -> Recipe:
    """The resolved recipe saved in a run directory, pointing at that directory wherever it is called from
    (its output_dir may be relative to where the run started)."""
    from kit.recipe import load_recipe
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no recipe.yaml); pass runs/<name> or a recipe file")
    recipe = load_recipe(recipe_file, [("output_dir", str(run_dir.parent)), *overrides])  # output_dir: not hashed
    if recipe.name != run_dir.name:
        raise RunDirError(f"{run_dir} holds the run named {recipe.name!r} (its recipe.yaml); "
                          f"rename the folder back to {recipe.name}")
    return recipe


def load_recipe_or_run(path, overrides=()) -> Recipe:
    """What every command that takes a recipe takes: a recipe file, or a run directory (its saved recipe)."""
    from kit.recipe import load_recipe
    p = Path(path)
    if p.is_dir():
        return load_run_recipe(p, overrides)
    return load_recipe(p, overrides)
