"""Loading what a finished run chose from its run directory: plan.json (kit.plan.load_plan), done.json,
ensemble/report.json (kit.report) and the out-of-fold predictions that give each configuration's score. Of a
pseudo-label run, its last round: the one that submits."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kit import metrics as M
from kit.context import member_done
from kit.errors import RunDirError
from kit.inference._bundle import BUNDLE_FILE, WEIGHTS_FILE, open_bundle
from kit.inference._ensemble import WEIGHT_EPS, Blend, Config, Ensemble, versions
from kit.plan import PLAN_FILE, RunPlan, load_plan
from kit.pool import config_predictions
from kit.report import REPORT_FILE, read_report
from kit.rundir import member_dir


def load(path) -> Ensemble:
    """A finished run directory (runs/<name>) or a bundle (a folder or .zip made by `kit export`)."""
    p = Path(path)
    if (p / BUNDLE_FILE).is_file() or (p.is_file() and p.suffix == ".zip"):
        return load_bundle(p)
    if (p / PLAN_FILE).is_file():
        return load_run(p)
    if (p / "recipe.yaml").is_file():
        raise RunDirError(f"{p} has no {PLAN_FILE} (a run from an older kit); write it with: kit submit {p}")
    raise RunDirError(f"{p} is neither a run directory (no {PLAN_FILE}) nor a bundle (no {BUNDLE_FILE}); pass "
                      f"runs/<name>, or a folder or .zip made by kit export")


def load_run(run_dir) -> Ensemble:
    run_dir = Path(run_dir)
    plan = load_plan(run_dir / PLAN_FILE)
    members = plan.members
    done = {m.name: member_done(run_dir, m) for m in members}
    pending = [m for m in members if done[m.name] is None]
    if pending:
        raise RunDirError(f"{len(pending)} of {len(members)} members of {run_dir} are not finished "
                          f"({', '.join(m.name for m in pending[:3])}{', ...' * (len(pending) > 3)}); train them "
                          f"with: kit train {run_dir} --member {','.join(str(m.index) for m in pending)} --resume")
    by_config = plan.configs()  # the last pseudo-label round's validated members: those that submit
    blend, weights, ttas, temps = _run_choice(run_dir, list(by_config))
    configs = _configs(run_dir, plan, by_config, ttas, weights, temps)
    kept = [c for c in configs if blend.method == "stack" or c.weight >= WEIGHT_EPS]
    if len(kept) < len(configs):
        total = sum(c.weight for c in kept)
        kept = [replace(c, weight=c.weight / total) for c in kept]
    files = {m.name: member_dir(run_dir, m.name) / "best.pt" for c in configs for m in c.members}
    left_out = [c.name for c in configs if c.name not in {k.name for k in kept}]
    return Ensemble(run_dir, "run", plan, plan.data["classes"], kept, blend, files, versions(), left_out)


def _run_choice(run_dir: Path, names: list):
    """(Blend, weight per configuration, TTA mode per configuration, temperature per configuration or None) as the
    run's last `kit submit` chose them: ensemble/report.json."""
    fix = f"blend the run first with: kit submit {run_dir}"
    report = read_report(run_dir / "ensemble" / REPORT_FILE, fix)
    if len(names) == 1:
        if report.members != names:
            raise RunDirError(f"{run_dir / 'ensemble' / REPORT_FILE} is about {report.members}, the plan has "
                              f"{names}; {fix}")
        return Blend(None, rule=report.rule), {names[0]: 1.0}, report.tta, {names[0]: None}
    if report.members != names or report.chosen is None:
        raise RunDirError(f"{run_dir / 'ensemble' / REPORT_FILE} blends {report.members}, the plan has {names}; "
                          f"blend the run again with: kit submit {run_dir}")
    res = report.methods[report.chosen]
    blend = Blend(report.chosen, res.get("oof_score"), res.get("nested_score"), res.get("params"), report.rule)
    temps = report.temperatures or [None] * len(names)
    return (blend, dict(zip(names, (float(w) for w in res["weights"]))), report.tta, dict(zip(names, temps)))


def _configs(run_dir, plan: RunPlan, by_config: dict, ttas: dict, weights: dict, temps: dict) -> list[Config]:
    """Each configuration with its pooled out-of-fold score and the temperature its blend was fitted with. Its
    models are its refitted members when data.refit made them (they made the run's test predictions), else its
    fold members."""
    metric = plan.recipe.train.metric
    out = []
    for name, ms in by_config.items():
        oof = config_predictions(run_dir, ms, ttas[name], need_test=False)[0]
        out.append(Config(name, ttas[name], weights[name], M.score(metric, oof.labels, oof.probs),
                          tuple(plan.refits(name) or ms), temps[name]))
    return out


def load_bundle(path) -> Ensemble:
    """The Ensemble of a bundle folder or .zip (kit.inference._bundle checks every file first); a zip's extracted
    folder lives as long as the Ensemble."""
    folder, manifest, keep = open_bundle(path)
    plan = load_plan(folder / PLAN_FILE)
    members = {m.name: m for m in plan.members}
    try:
        configs = [Config(c["name"], c["tta"], float(c["weight"]), c["score"],
                          tuple(members[n] for n in c["members"]), c.get("temperature")) for c in manifest["configs"]]
        blend = Blend(**manifest["blend"])
        files = {n: folder / "members" / n / WEIGHTS_FILE for c in configs for n in (m.name for m in c.members)}
        return Ensemble(path, "bundle", plan, manifest["classes"], configs, blend, files, manifest["versions"],
                        manifest.get("left_out", ()), keep)
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{folder / BUNDLE_FILE} is not a bundle this kit reads ({type(e).__name__}: "
                          f"{str(e)[:200]}); export the run again with this kit") from None
