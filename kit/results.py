"""A run's results: each finished configuration at its chosen TTA mode (collect), the blends scored and chosen
(blend, written to ensemble/report.json by kit.report), a pseudo-label round's blend (blend_round), and the
Summary of it all. Below kit.run and kit.executor, which both use it; nothing here trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import metrics as M
from kit.choice import choose_tta
from kit.context import RunContext, member_done
from kit.decision import apply_decision, fit_decision
from kit.errors import RunDirError
from kit.pool import config_oofs, config_predictions
from kit.predictions import Predictions, load_predictions, save_predictions
from kit.report import REPORT_FILE, BlendReport, method_dict, read_report, write_report
from kit.rundir import round_dir


@dataclass
class ConfigResult:
    config: str  # "<backbone>-s<seed>"
    backbone: str
    seed: int
    tta_scores: dict  # mode -> pooled out-of-fold score (primary metric), every mode its members predicted
    tta: str  # the mode chosen by kit.choice.choose_tta
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
    chosen_why: str = ""  # which rule chose the blend, and by how much (kit.choice)
    decision: dict | None = None  # the decision rule fitted out of fold (kit.decision), kept or not, and why

    @property
    def tta(self) -> str:
        """The chosen TTA mode, or the modes of the configurations joined by '+' when they differ."""
        return "+".join(dict.fromkeys(c.tta for c in self.configs)) or "none"

    def validation_score(self) -> float | None:
        """The submission's validation estimate: the chosen blend's nested score, or the best member's score; with
        a decision rule kept, its nested score (fitted on other rows than it scores, as the blend's)."""
        if self.decision and self.decision.get("kept"):
            return float(self.decision["nested"])
        if self.chosen:
            return self.methods[self.chosen].nested_score
        best = best_config(self.configs, self.metric)
        return best.tta_scores[best.tta] if best else None


def collect(ctx: RunContext, *, need_test: bool = True, round: int | None = None
            ) -> tuple[list[ConfigResult], list[str]]:
    """Each finished configuration's out-of-fold and test predictions at its chosen TTA mode (kit.choice.choose_tta
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
        tta, why = choose_tta(oofs, metric, fixed, ctx.task.metrics)[:2]
        refits = ctx.plan.refits(config)
        oof, test = config_predictions(ctx.run_dir, ms, tta, need_test=need_test, refits=refits)
        configs.append(ConfigResult(config, ms[0].recipe.model.backbone, ms[0].seed, tta_scores, tta, oof, test,
                                    tuple(m.name for m in refits), why))
    return configs, pending


def best_config(configs: list[ConfigResult], metric: str) -> ConfigResult | None:
    best = None
    for c in configs:
        s = c.tta_scores[c.tta]
        if best is None or M.better(metric, s, best[0]):
            best = (s, c)
    return best[1] if best else None


def blend(ctx: RunContext, configs: list[ConfigResult], out: Path | None = None, round: int | None = None
          ) -> tuple[dict, str | None, str]:
    """Score every blending method (the best single member among them) on out-of-fold predictions with a nested
    estimate, save the blends and the report in `out` (default runs/<name>/ensemble); the chosen one by
    ensemble.choose, or by kit.choice's rule (auto). Returns (methods, chosen, why)."""
    from kit import ensemble as E
    r = ctx.recipe
    out = out or ctx.run_dir / "ensemble"
    task = ctx.task
    best = best_config(configs, r.train.metric)
    if len(configs) < 2:  # the report still says what predicts: that configuration, at its TTA mode
        why = "one configuration: nothing to blend"
        if best is not None:
            write_report(out, BlendReport(r.train.metric, None, why, [best.config], {best.config: best.tta}, None,
                                          {}, best.config, best.tta_scores[best.tta], round,
                                          fit_decision(task, best.oof.labels, best.oof.probs, r.data.seed)))
        return {}, None, why
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
    methods = E.evaluate_methods(oofs, r.train.metric, folds=folds, methods=r.ensemble.methods, seed=r.data.seed,
                                 task=task)
    if r.ensemble.choose == "auto":
        chosen, why = E.choose_method(methods, r.train.metric, oofs[0].labels)[:2]
    else:
        chosen, why = r.ensemble.choose, "ensemble.choose"
    for name, res in methods.items():
        save_predictions(Predictions(ids, E.apply_method([o.probs for o in oofs], res, simplex=task.softmax),
                                     oofs[0].classes, oofs[0].labels), out / f"oof_{name}.npz")
        if tests:
            test_ids = tests[0].ids
            probs = E.apply_method([t.reorder(test_ids).probs for t in tests], res, simplex=task.softmax)
            save_predictions(Predictions(test_ids, probs, tests[0].classes), out / f"test_{name}.npz")
    final = E.apply_method([o.probs for o in oofs], methods[chosen], simplex=task.softmax) if chosen else \
        best.oof.reorder(ids).probs
    write_report(out, BlendReport(r.train.metric, chosen, why, [c.config for c in configs],
                                  {c.config: c.tta for c in configs}, temps,
                                  {k: method_dict(v) for k, v in methods.items()}, best.config,
                                  best.tta_scores[best.tta], round,
                                  fit_decision(task, oofs[0].labels, final, r.data.seed)))
    return methods, chosen, why


def blend_round(ctx: RunContext, round: int, log=print) -> BlendReport:
    """Blend pseudo-label round `round` (every member finished) into ensemble/round<r>/: the teacher of the next
    round, recorded on the leaderboard as ensemble:<method>:round<r>, so that the gain per round is visible."""
    from kit.record import record_ensemble
    pending = [m.name for m in ctx.plan.members if m.round == round and member_done(ctx.run_dir, m) is None]
    if pending:
        raise RunDirError(f"round {round + 1} of pseudo-labels learns from round {round}, whose members "
                          f"{', '.join(pending[:3])} are not finished; train them first: kit train {ctx.run_dir}")
    configs, _ = collect(ctx, round=round)
    out = round_dir(ctx.run_dir, round)
    methods, chosen, why = blend(ctx, configs, out, round=round)
    report = read_report(out / REPORT_FILE, f"blend round {round} again with: kit submit {ctx.run_dir}")
    summary = Summary(ctx.run_dir, ctx.recipe.train.metric, configs, methods, chosen, None, 0.0, [],
                      chosen_why=why)
    record_ensemble(ctx, summary, suffix=f":round{round}")
    log(f"round {round}: {chosen or 'best member ' + report.best_member} {ctx.recipe.train.metric} "
        f"{report.score:.4f} (nested); the next round learns from it")
    return report


def final_test_predictions(ctx: RunContext, configs: list[ConfigResult], chosen: str | None) -> Predictions | None:
    """What the submission is made of: the chosen blend's (or the best configuration's) test scores, with the
    decision rule fitted on their out-of-fold twins applied (kit.decision; report.json holds it)."""
    if chosen is not None:
        f = ctx.run_dir / "ensemble" / f"test_{chosen}.npz"
        pred = load_predictions(f) if f.exists() else None
    else:
        best = best_config(configs, ctx.recipe.train.metric)
        pred = best.test if best else None
    report = ctx.run_dir / "ensemble" / REPORT_FILE
    rule = read_report(report, f"blend the run again: kit submit {ctx.run_dir}").rule if report.is_file() else None
    if pred is None or rule is None:
        return pred
    return Predictions(pred.ids, apply_decision(rule, pred.probs), pred.classes)


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
         "chosen": s.chosen, "chosen_why": s.chosen_why, "test_scores": s.test_scores, "bad_images": s.bad_images,
         "decision": s.decision,
         "rounds": _round_scores(s.run_dir)}
    if s.chosen and best:
        d["gain_oof"] = s.methods[s.chosen].oof_score - d["best_member_score"]
        d["gain_nested"] = s.methods[s.chosen].nested_score - d["best_member_score"]
        d["best_member_kept"] = s.chosen == "best"
    return d


def _round_scores(run_dir) -> list[dict]:
    """Earlier pseudo-label rounds' validation scores (their blend's nested score, or the best member's)."""
    out = []
    for f in sorted(Path(run_dir).glob(f"ensemble/round*/{REPORT_FILE}")):
        r = read_report(f, f"blend the run again with: kit submit {run_dir}")
        out.append({"round": r.round, "chosen": r.chosen, "score": r.score})
    return out
