"""The search space: checked against the recipe before a study starts, sampled by each trial."""
from __future__ import annotations

import optuna

from kit.recipe import Recipe, RecipeError, SearchParam

_PRIMITIVE = (type(None), bool, int, float, str)  # what Optuna stores as a categorical choice


def check_search_space(recipe: Recipe) -> None:
    """Fail before the study starts if a searched value could not make a valid recipe, naming the key."""
    s, where = recipe.search, f"recipe {recipe.name!r}"
    if not s.params:
        raise RecipeError(f"recipe key 'search.params' in {where}: nothing to search; add e.g. search: {{params: "
                          f"{{train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}}}}}")
    folds = recipe.data.folds if recipe.data.split == "kfold" else 1
    if s.fold >= folds:
        raise RecipeError(f"recipe key 'search.fold' in {where}: fold {s.fold} does not exist; data.split="
                          f"{recipe.data.split} has folds 0..{folds - 1}")
    if s.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise RecipeError(f"recipe key 'search.sampler' in {where}: cmaes needs the cmaes package: "
                              f"pip install cmaes (or use tpe, random, qmc)") from None
    first = recipe.ensemble.backbones[0] if recipe.ensemble.backbones else {}
    for key, p in s.params.items():
        fail = _failer(f"search.params.{key}", where)
        section, _, rest = key.partition(".")
        if rest in first.get(section, {}):
            fail(f"ensemble.backbones[0] sets {key} too, and trials train that backbone: the sampled value "
                 f"would be overridden; remove it from one of them")
        if p.type == "categorical":
            bad = [c for c in p.choices if not isinstance(c, _PRIMITIVE)]
            if bad:
                fail(f"choices must be numbers, strings, booleans or null (Optuna stores them); got {bad[0]!r}")
        else:
            if p.log and p.step is not None:
                fail("step and log cannot be combined; drop one")
            if p.type == "int" and any(v is not None and v != int(v) for v in (p.low, p.high, p.step)):
                fail(f"type int needs whole low, high and step; got low={p.low}, high={p.high}, step={p.step}")
        for label, value in _extremes(p):
            try:
                recipe.with_overrides({key: value}, source=where)
            except RecipeError as e:
                fail(f"its {label} {value!r} makes an invalid recipe: {e}")


def _failer(key: str, where: str):
    def fail(msg):
        raise RecipeError(f"recipe key '{key}' in {where}: {msg}")
    return fail


def _extremes(p: SearchParam) -> list[tuple[str, object]]:
    if p.type == "categorical":
        return [(f"choice {i}", c) for i, c in enumerate(p.choices)]
    cast = int if p.type == "int" else float
    return [("low", cast(p.low)), ("high", cast(p.high))]


def suggest(trial: optuna.Trial, params: dict[str, SearchParam]) -> dict:
    """Ask the trial for a value of every searched key (the key path is the Optuna parameter name)."""
    out = {}
    for key, p in params.items():
        if p.type == "float":
            out[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[key] = trial.suggest_categorical(key, p.choices)
    return out
