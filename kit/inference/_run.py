"""Loading what a finished run chose from its run directory: plan.json, done.json, ensemble/report.json (or, with
one configuration, summary.json) and the out-of-fold predictions that give each configuration's score."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from kit import metrics as M
from kit.errors import RunDirError
from kit.inference._ensemble import WEIGHT_EPS, Blend, Config, Ensemble, versions
from kit.plan import PLAN_FILE, PLAN_FORMAT, MemberPlan
from kit.recipe import Recipe


def load(path) -> Ensemble:
    """A finished run directory (runs/<name>) or a bundle (a folder or .zip made by `kit export`)."""
    from kit.bundle import BUNDLE_FILE, load_bundle
    p = Path(path)
    if (p / BUNDLE_FILE).is_file() or (p.is_file() and p.suffix == ".zip"):
        return load_bundle(p)
    if (p / PLAN_FILE).is_file():
        return load_run(p)
    if (p / "recipe.yaml").is_file():
        raise RunDirError(f"{p} has no {PLAN_FILE} (a run from an older kit); write it with: kit submit {p}")
    raise RunDirError(f"{p} is neither a run directory (no {PLAN_FILE}) nor a bundle (no {BUNDLE_FILE}); pass "
                      f"runs/<name>, or a folder or .zip made by kit export")


def read_json(path: Path, fix: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {path}: {e}; {fix}") from None


def member_plans(raw: dict, source) -> list[MemberPlan]:
    """The members of a plan.json dict. Unlike kit.plan.plan_from_dict, the data paths in each recipe are not
    required to exist: predicting needs no training data, and a bundle travels to machines that have none."""
    from pydantic import ValidationError
    if raw.get("format") != PLAN_FORMAT:
        raise RunDirError(f"{source} is a plan of format {raw.get('format')}, this kit reads format {PLAN_FORMAT}")
    try:
        return [MemberPlan(**{**m, "recipe": Recipe.model_validate(m["recipe"]), "tta_modes": tuple(m["tta_modes"])})
                for m in raw["members"]]
    except (ValidationError, KeyError, TypeError) as e:
        raise RunDirError(f"{source} is not a plan this kit can read ({type(e).__name__}: {str(e)[:200]})") from None


def plan_recipe(raw: dict, source) -> Recipe:
    """The run's own recipe in a plan.json dict (its data paths, too, need not exist)."""
    from pydantic import ValidationError
    try:
        return Recipe.model_validate(raw["recipe"])
    except (ValidationError, KeyError, TypeError) as e:
        raise RunDirError(f"{source} is not a plan this kit can read ({type(e).__name__}: {str(e)[:200]})") from None


def load_run(run_dir) -> Ensemble:
    from kit.members import member_done
    from kit.rundir import member_dir
    run_dir = Path(run_dir)
    raw = read_json(run_dir / PLAN_FILE, f"plan it again with: kit submit {run_dir}")
    members, recipe = member_plans(raw, run_dir / PLAN_FILE), plan_recipe(raw, run_dir / PLAN_FILE)
    done = {m.name: member_done(run_dir, m) for m in members}
    pending = [m for m in members if done[m.name] is None]
    if pending:
        raise RunDirError(f"{len(pending)} of {len(members)} members of {run_dir} are not finished "
                          f"({', '.join(m.name for m in pending[:3])}{', ...' * (len(pending) > 3)}); train them "
                          f"with: kit train {run_dir} --member {','.join(str(m.index) for m in pending)} --resume")
    by_config, refits = {}, {}  # validated fold members; those refitted on every image (data.refit), which predict
    for m in members:
        (by_config if m.refit_of is None else refits).setdefault(m.config, []).append(m)
    blend, weights, ttas = _run_choice(run_dir, by_config, done, recipe.train.metric)
    configs = _configs(run_dir, by_config, ttas, weights, recipe, blend.method, refits)
    kept = [c for c in configs if blend.method == "stack" or c.weight >= WEIGHT_EPS]
    if len(kept) < len(configs):
        total = sum(c.weight for c in kept)
        kept = [replace(c, weight=c.weight / total) for c in kept]
    files = {m.name: member_dir(run_dir, m.name) / "best.pt" for c in configs for m in c.members}
    left_out = [c.name for c in configs if c.name not in {k.name for k in kept}]
    return Ensemble(run_dir, "run", recipe, raw["data"]["classes"], kept, blend, files, versions(),
                    raw.get("environment", {}), left_out)


def _run_choice(run_dir: Path, by_config: dict, done: dict, metric: str):
    """(Blend, weight per configuration, TTA mode per configuration) as the run's last `kit submit` chose them:
    ensemble/report.json, or with one configuration summary.json (or the run's TTA rule, before any submit)."""
    names = list(by_config)
    if len(names) == 1:
        summary = run_dir / "summary.json"
        tta = read_json(summary, "").get("tta_by_member", {}).get(names[0]) if summary.is_file() else None
        return Blend(None), {names[0]: 1.0}, {names[0]: tta or _choose_tta(run_dir, by_config[names[0]], done, metric)}
    report = read_json(run_dir / "ensemble" / "report.json", f"blend the run first with: kit submit {run_dir}")
    if report.get("members") != names:
        raise RunDirError(f"{run_dir / 'ensemble' / 'report.json'} blends {report.get('members')}, the plan has "
                          f"{names}; blend the run again with: kit submit {run_dir}")
    chosen = report["chosen"]
    res = report["methods"][chosen]
    blend = Blend(chosen, res.get("oof_score"), res.get("nested_score"), res.get("params"))
    return blend, dict(zip(names, (float(w) for w in res["weights"]))), report["tta"]


def _choose_tta(run_dir, ms, done, metric):
    from kit.members import choose_tta, config_oofs
    return choose_tta(config_oofs(run_dir, ms, {m.name: done[m.name] for m in ms}), metric,
                      ms[0].recipe.tta.mode).mode


def _configs(run_dir, by_config, ttas, weights, recipe: Recipe, method, refits: dict) -> list[Config]:
    """Each configuration with its pooled out-of-fold score and, under ensemble.temperature, its temperature
    fitted as kit.run.blend fits it (rows in the order of the first configuration's). Its models are its
    refitted members when data.refit made them (they made the run's test predictions), else its fold members."""
    from kit import ensemble as E
    from kit.members import config_predictions
    oofs = {name: config_predictions(run_dir, ms, ttas[name], need_test=False)[0] for name, ms in by_config.items()}
    ids = next(iter(oofs.values())).ids
    out = []
    for name, ms in by_config.items():
        oof = oofs[name].reorder(ids)
        temperature = E.temperature_scale(oof.probs, oof.labels) if method and recipe.ensemble.temperature else None
        out.append(Config(name, ttas[name], weights[name], M.score(recipe.train.metric, oof.labels, oof.probs),
                          tuple(refits.get(name) or ms), temperature))
    return out
