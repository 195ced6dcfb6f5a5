"""What a finished study leaves: best.yaml, top_k.json (and its blend), the plots."""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from kit.recipe import Recipe
from kit.errors import RunDirError
from kit.rundir import pred_path, write_json_atomic, write_text_atomic
from kit.tune._storage import study_dir
from kit.tune._trials import _short


def finish_study(study: optuna.Study, recipe: Recipe, log=print) -> None:
    states = [t.state for t in study.trials]
    log(f"study {study.study_name!r}: " + ", ".join(f"{states.count(s)} {s.name.lower()}" for s in TrialState
                                                    if states.count(s)))
    if not any(s == TrialState.COMPLETE for s in states):
        log("no trial completed: no best.yaml")
        return
    best = study.best_trial
    log(f"best: trial {best.number}, {recipe.train.metric} {best.value:.4f}  "
        + " ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    for path in [write_best(study, recipe), write_top_k(study, recipe), *save_plots(study, recipe, log)]:
        log(f"wrote {path}")


def write_best(study: optuna.Study, recipe: Recipe) -> Path:
    """best.yaml: the resolved recipe with the best trial's values and no search section, for `kit run`."""
    best, name = study.best_trial, study.study_name
    best_name = f"{recipe.name}-best" if name == recipe.name else f"{recipe.name}-{name}-best"
    from kit.recipe import SearchSpec
    r = recipe.with_overrides(dict(best.params, name=best_name, search=SearchSpec().model_dump()), source="best.yaml")
    raw = r.to_dict()
    raw.pop("search")  # it must load as it is: checked by with_overrides above
    head = (f"# Trial {best.number} of study {name!r}: validation {recipe.train.metric} {best.value:.6g} "
            f"(fold {recipe.search.fold}, seed {recipe.seeds[0]}).\n# kit run this file: its member of "
            f"that fold and seed retrains the trial; ensemble, TTA and submission as in {recipe.name}.\n")
    return write_text_atomic(study_dir(recipe, name) / "best.yaml", head + yaml.safe_dump(raw, sort_keys=False))


def top_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: (-t.value if maximize else t.value, t.number))[:k]


def write_top_k(study: optuna.Study, recipe: Recipe) -> Path:
    """top_k.json: the search.top_k best complete trials, with their run dirs and prediction files."""
    trials = []
    for t in top_trials(study, recipe.search.top_k):
        run_dir, member, tta = t.user_attrs.get("run_dir"), t.user_attrs.get("member"), t.user_attrs.get("tta")
        preds = {split: str(pred_path(run_dir, member, split, tta)) for split in ("oof", "test")
                 if run_dir and member and pred_path(run_dir, member, split, tta).exists()}
        trials.append({"number": t.number, "value": t.value, "params": t.params, "run_dir": run_dir,
                       "member": member, "tta": tta, "worker": t.user_attrs.get("worker"), "predictions": preds})
    return write_json_atomic(study_dir(recipe, study.study_name) / "top_k.json",
                             {"study": study.study_name, "metric": recipe.train.metric,
                              "direction": study.direction.name.lower(), "trials": trials})


def blend_top_k(top_k_json, methods=None) -> dict:
    """Blend the top-k trials' out-of-fold predictions with kit.ensemble: {method: MethodResult}. They all
    validated the same fold, so their rows line up."""
    from kit import ensemble as E
    from kit.predictions import load_predictions
    from kit.readers import read_json
    top = read_json(top_k_json, fix="write it again with kit tune (it lists the best trials)",
                    schema={"metric": str, "trials": [{"predictions": {"*": str}}]})
    oofs = [load_predictions(t["predictions"]["oof"]) for t in top["trials"] if "oof" in t["predictions"]]
    if len(oofs) < 2:
        raise RunDirError(f"{top_k_json}: {len(oofs)} trials with predictions here; blending needs 2 or more")
    oofs = [p.reorder(oofs[0].ids) for p in oofs]
    return E.evaluate_methods(oofs, top["metric"], methods=methods or E.METHODS, task=_trials_task(top))


def _trials_task(top: dict):
    """The task (kit.task) the trials' plans resolved, from the first trial's run directory; None (classes) when
    it is not here."""
    from kit.plan import PLAN_FILE, load_plan
    run_dir = next((t.get("run_dir") for t in top["trials"] if t.get("run_dir")), None)
    if run_dir is None or not (Path(run_dir) / PLAN_FILE).is_file():
        return None
    return load_plan(Path(run_dir) / PLAN_FILE).task


def save_plots(study: optuna.Study, recipe: Recipe, log=print) -> list[Path]:
    """optimization_history.png always; param_importances.png with 2+ complete trials and 2+ searched keys."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm
    out = study_dir(recipe, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"optimization_history.png": lambda: vm.plot_optimization_history(study)}
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 2:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=recipe.search.seed)
        plots["param_importances.png"] = lambda: vm.plot_param_importances(study, evaluator=evaluator)
    else:
        log("param importances need 2 complete trials and 2 searched keys: not plotted")
    paths = []
    for file, plot in plots.items():
        try:
            # rc_context: Optuna's plots switch pyplot to the ggplot style for the whole process; undo it after.
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fig = plot().get_figure()
                fig.savefig(out / file, dpi=120, bbox_inches="tight")
                plt.close(fig)
            paths.append(out / file)
        except Exception as e:  # e.g. every complete trial has the same values: no importance to compute
            log(f"{file} not plotted: {type(e).__name__}: {e}")
    return paths
