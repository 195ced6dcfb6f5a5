"""Contract tests over every bundled recipe in recipes/: each loads and plans (fast); each runs end to end on the
real digits data with the real offline weights (slow: `python -m pytest -m slow`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    return [("output_dir", str(tmp_path / "runs")), ("leaderboard", str(tmp_path / "lb.sqlite"))]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_plans(path, tmp_path, monkeypatch):
    from kit.context import load_checked_sources
    from kit.plan import format_plan, make_plan
    over = _isolated(tmp_path, monkeypatch) + [("model.channels_last", False)]
    recipe = load_recipe(path, over)
    if recipe.distill.teacher:  # the teacher's plan is all planning needs (training reads its predictions)
        from kit.plan import make_plan as plan_teacher, save_plan
        teacher = load_recipe(path.parent / "quickstart.yaml", over)
        assert (tmp_path / recipe.distill.teacher).resolve() == teacher.run_dir.resolve()
        save_plan(plan_teacher(teacher, load_checked_sources(teacher)[0]), teacher.run_dir / "plan.json")
    sources, bad = load_checked_sources(recipe)
    plan = make_plan(recipe, sources)
    assert not bad and len(plan.members) == len(recipe.seeds) * len(recipe.ensemble.backbones or [{}]) * (
        recipe.data.folds if recipe.data.split == "kfold" else 1) * (recipe.pseudo.rounds + 1)
    assert all(m.recipe.model.strategy != "auto" and m.recipe.model.weights != "auto" for m in plan.members)
    assert "total:" in format_plan(plan)[-1]


@pytest.mark.slow
def test_quickstart_end_to_end_at_two_epochs(tmp_path, monkeypatch):
    from kit.run import run
    over = _isolated(tmp_path, monkeypatch) + [("train.epochs", 3), ("ensemble.seeds", [0, 1])]
    summary = run(load_recipe(RECIPES[0].parent / "quickstart.yaml", over), log=lambda m: None)
    assert summary.submission.exists() and summary.test_scores["private"] > 0.6  # 10 classes: chance is 0.1
    assert all(c.tta_scores["none"] > 0.6 for c in summary.configs)


@pytest.mark.slow
def test_digits_features_end_to_end(tmp_path, monkeypatch):
    from kit.run import run
    summary = run(load_recipe(RECIPES[0].parent / "digits_features.yaml", _isolated(tmp_path, monkeypatch)),
                  log=lambda m: None)
    assert summary.submission.exists() and summary.configs[0].tta_scores["none"] > 0.8


@pytest.mark.slow
def test_quickstart_tune_two_trials(tmp_path, monkeypatch):
    from kit.tune import tune
    over = _isolated(tmp_path, monkeypatch) + [("train.epochs", 2)]
    recipe = load_recipe(RECIPES[0].parent / "quickstart_tune.yaml", over)
    study = tune(recipe, n_trials=2, log=lambda m: None)
    assert len(study.trials) == 2 and study.best_value > 0.5
    best = recipe.run_dir / "best.yaml"
    assert best.exists() and load_recipe(best).name == "quickstart_tune-best"
    assert json.loads((recipe.run_dir / "top_k.json").read_text())["trials"]
