"""kit.advise: the four cases of `decide` from constructed measurements, the measurements themselves on a
tiny folder (random-init test_resnet), and model.strategy: auto resolved through the cache and train_member."""
from __future__ import annotations

import json

import pytest

from kit import advise as A
from kit.context import prepare_run
from kit.member_train import train_member
from kit.recipe import recipe_from_dict, set_path
from kit.rundir import member_dir

SMALL, LARGE = (500, 10), (50_000, 10)  # (images, classes): 50 and 5,000 per class
SIMILAR = {"probe_lift": 0.85, "probe_lift_early": 0.40, "early_stage": 2}
DIFFERENT = {"probe_lift": 0.45, "probe_lift_early": 0.35, "early_stage": 2}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "kitcache"))
    return tmp_path / "kitcache"


@pytest.mark.parametrize("size,measured,strategy,keys", [
    (SMALL, SIMILAR, "feature_extract", {"model.strategy": "feature_extract"}),
    (LARGE, SIMILAR, "finetune", {"model.strategy": "finetune", "model.frozen_stages": 4}),
    (SMALL, DIFFERENT, "full", {"model.strategy": "full"}),  # not the table's cut_at: measured worse
    (LARGE, DIFFERENT, "full", {"model.strategy": "full"}),
])
def test_the_four_cases(size, measured, strategy, keys):
    got, got_keys, why = A.decide(*size, measured, n_stages=8)
    assert (got, got_keys) == (strategy, keys)
    assert why[0].startswith(f"{size[0]} labelled images") and ("small" in why[0]) == (size is SMALL)
    assert recipe_from_dict(_with(keys)).model.strategy == strategy  # the keys make a valid recipe


def _with(keys: dict) -> dict:
    raw = {"model": {"backbone": "test_resnet", "weights": "none"}}
    for k, v in keys.items():
        raw = set_path(raw, k, v)
    return raw


def test_thresholds():
    n, c = SMALL
    assert A.decide(A.LARGE_IMAGES, 10, SIMILAR)[0] == "finetune"  # by count
    assert A.decide(A.LARGE_PER_CLASS * 2, 2, SIMILAR)[0] == "finetune"  # by images per class
    assert A.decide(A.LARGE_IMAGES - 1, 100, SIMILAR)[0] == "feature_extract"
    assert A.decide(n, c, {"probe_lift": A.SIMILAR_LIFT})[0] == "feature_extract"
    assert A.decide(n, c, {"probe_lift": A.SIMILAR_LIFT - 0.01})[0] == "full"
    # a good late probe is not enough when the early stage does as well: digits (0.90 vs 0.90)
    strategy, _, why = A.decide(n, c, {"probe_lift": 0.90, "probe_lift_early": 0.90})
    assert strategy == "full" and any("early-stage probe does as well" in w for w in why)
    assert any("0.566 on digits against 0.854" in w for w in why)
    assert A.decide(n, c, {"probe_lift": 0.99, "probe_lift_early": 0.99})[0] == "feature_extract"  # easy for all
    # without a probe, the ImageNet head's confidence decides
    assert A.decide(n, c, {"imagenet_max_prob": A.SIMILAR_MAX_PROB})[0] == "feature_extract"
    assert A.decide(n, c, {"imagenet_max_prob": 0.1})[0] == "full"
    with pytest.raises(ValueError, match="probe_lift or imagenet_max_prob"):
        A.decide(n, c, {})


def test_probe_lift_is_relative_to_the_majority_class():
    import numpy as np
    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 10)
    assert A.probe(rng.normal(size=(40, 4)), y)["base"] == 0.75
    separable = A.probe(np.c_[y * 5.0, rng.normal(size=(40, 3))], y)
    assert separable["lift"] == pytest.approx(1.0)
    assert A.probe(rng.normal(size=(3, 2)), np.array([0, 1, 1])) is None  # a class with 1 image: no CV


def tiny_recipe(tmp_path, data_spec, **model):
    return recipe_from_dict({
        "name": "auto", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {**data_spec.model_dump(), "num_workers": 0},
        "augment": {"input_size": 32},
        "model": {"backbone": "test_resnet", "weights": "none", "channels_last": False, **model},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup_epochs": 0},
        "tta": {"modes": ["none"]},
    })


def test_advise_measures_and_explains(tmp_path, imagefolder_spec):
    advice = A.advise(tiny_recipe(tmp_path, imagefolder_spec))
    m = advice.measurements
    assert (m["n_images"], m["n_classes"], m["n_sampled"]) == (30, 3, 30)
    assert 0 <= m["probe_accuracy"] <= 1 and 0 <= m["probe_accuracy_early"] <= 1
    assert m["probe_base"] == pytest.approx(1 / 3)
    assert m["early_stage"] == 2  # test_resnet's layer2, stride 8
    assert "imagenet_max_prob" not in m and "random weights" in m["note"]
    assert advice.strategy in ("feature_extract", "finetune", "cut_at", "full")
    assert advice.recipe_keys["model.strategy"] == advice.strategy and advice.reasoning
    text = "\n".join(A.format_advice(advice))
    assert "probe_lift:" in text and f"strategy: {advice.strategy}" in text and "model:" in text


def test_auto_resolves_once_in_the_plan_and_trains(tmp_path, imagefolder_spec, cache_dir, monkeypatch):
    recipe = tiny_recipe(tmp_path, imagefolder_spec, strategy="auto")
    ctx = prepare_run(recipe)
    member = ctx.plan.members[0]
    assert member.recipe.model.strategy != "auto" and len(list((cache_dir / "advice").glob("*.json"))) == 1
    assert ctx.plan.advice["0"]["strategy"] == member.recipe.model.strategy

    def no_measuring(*args, **kwargs):
        raise AssertionError("advice should come from the cache")
    monkeypatch.setattr(A, "advise", no_measuring)
    other = recipe.with_overrides({"name": "again"})  # another run of the same data and backbone: cached advice
    assert prepare_run(other).plan.members[0].recipe == member.recipe.with_overrides({"name": "again"})
    record = train_member(ctx, member)
    assert record["strategy"] == member.recipe.model.strategy
    assert json.loads((member_dir(ctx.run_dir, member.name) / "done.json").read_text())["scores"]["none"]
