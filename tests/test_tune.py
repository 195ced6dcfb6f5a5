"""kit.tune on the 3-class x 10-image folder of conftest: test_resnet at 32 px from scratch, CPU, holdout.

A trial here trains in ~0.1 s an epoch: 24 training images, 6 validation images. Scores are log_loss, which moves
with any learning (accuracy on 6 images barely does): lr 0.1 brings it from ln 3 = 1.0986 to ~1.03 by the second
epoch, while lr 1e-6 keeps it at ~1.099, a difference the median pruner cannot miss.
"""
from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kit.recipe import RecipeError, load_recipe, recipe_from_dict
from kit.tune import create_study, study_dir, trial_recipe, tune

GOOD_LR, BAD_LR = 0.1, 1e-6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A 32 px test_resnet gains nothing from a second thread, and on a shared 2-core machine two spinning threads
    per process made a trial 10x slower (measured: 2 trials 24 s with 2 threads, 2.6 s with 1)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def base(imagefolder_spec, tmp_path, monkeypatch):
    """A raw recipe dict: tiny, fast and deterministic on CPU (channels_last fixed: not timed per machine)."""
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    return {"name": "tiny", "output_dir": str(tmp_path / "runs"), "leaderboard": f"sqlite:///{tmp_path}/lb.sqlite",
            "data": {**imagefolder_spec.model_dump(), "num_workers": 0}, "augment": {"input_size": 32},
            "model": {"backbone": "test_resnet", "weights": "none", "channels_last": False},
            "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "lr": 0.01, "metric": "log_loss",
                      "device": "cpu"},
            "search": {"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
                                  "model.drop_rate": {"type": "float", "low": 0.0, "high": 0.5}}}}


def make(raw, **search) -> object:
    return recipe_from_dict({**raw, "search": {**raw["search"], **search}})


def quiet(_msg):
    pass


# ---------------------------------------------------------------- the search space

@pytest.mark.parametrize("key, param, message", [
    ("train.lrr", {"type": "float", "low": 1e-4, "high": 1e-2}, "not a recipe key"),
    ("train.lr", {"type": "float", "low": 1e-2, "high": 1e-4}, "low <= high must hold"),
    ("train.lr", {"type": "float", "low": 0.0, "high": 1e-2, "log": True}, "log scale needs low > 0"),
    ("model.head", {"type": "categorical"}, "categorical needs a non-empty list of choices"),
    ("model.head", {"type": "categorical", "choices": []}, "categorical needs a non-empty list of choices"),
    ("train.epochs", {"type": "int", "low": 1}, "needs low and high"),
])
def test_recipe_checks_name_the_searched_key(base, key, param, message):
    with pytest.raises(RecipeError, match=rf"search\.params\.{key}'.*{message}"):
        recipe_from_dict({**base, "search": {"params": {key: param}}})


@pytest.mark.parametrize("key, param, message", [
    ("train.lr", {"type": "float", "low": 0.0, "high": 1e-2}, r"its low 0.0 makes an invalid recipe.*train\.lr"),
    ("model.head", {"type": "categorical", "choices": ["linear", "boosted"]}, "its choice 1 'boosted'"),
    ("train.epochs", {"type": "int", "low": 1, "high": 4.5}, "whole low, high and step"),
    ("train.lr", {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}, "step and log"),
    ("augment.train", {"type": "categorical", "choices": [[{"HorizontalFlip": {}}]]}, "numbers, strings"),
])
def test_bad_ranges_fail_before_the_study_starts(base, key, param, message):
    recipe = recipe_from_dict({**base, "search": {"params": {key: param}}})
    with pytest.raises(RecipeError, match=rf"search\.params\.{key}'.*{message}"):
        tune(recipe, 1, log=quiet)
    assert not recipe.run_dir.exists()  # no study, no trial


def test_fold_and_empty_space_fail_early(base):
    with pytest.raises(RecipeError, match=r"'search\.fold'.*folds 0\.\.0"):
        tune(make(base, fold=1), 1, log=quiet)
    with pytest.raises(RecipeError, match=r"'search\.params'.*nothing to search"):
        tune(recipe_from_dict({**base, "search": {}}), 1, log=quiet)


def test_trial_recipe_sets_values_one_seed_own_dir(base):
    recipe = recipe_from_dict({**base, "ensemble": {"seeds": [3, 4]}})
    r = trial_recipe(recipe, {"train.lr": 0.05, "model.drop_rate": 0.25}, 7)
    assert (r.train.lr, r.model.drop_rate, r.ensemble.seeds) == (0.05, 0.25, [3])
    assert r.run_dir == recipe.run_dir / "trials" / "trial_0007"
    assert study_dir(recipe, "other") == recipe.run_dir / "studies" / "other"


# ---------------------------------------------------------------- studies

def test_a_seeded_study_repeats(base):
    recipe = make(base, sampler="tpe", seed=3)
    runs = [tune(recipe, 2, study_name=name, pruner=optuna.pruners.NopPruner(), log=quiet) for name in ("a", "b")]
    params = [[t.params for t in s.trials] for s in runs]
    assert params[0] == params[1]
    assert params[0][0] != params[0][1]  # and the trials differ from each other
    other = tune(make(base, sampler="tpe", seed=4, trials=1), study_name="c", log=quiet)
    assert other.trials[0].params != params[0][0]


def test_pruning_stops_weak_trials(base):
    raw = {**base, "train": {**base["train"], "epochs": 4}}
    recipe = make(raw, params={"train.lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]}}, top_k=2)
    # Compare from the second epoch on (n_warmup_steps=1), against the first trial alone (n_startup_trials=1).
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    study = create_study(recipe, pruner=pruner)
    for lr in (GOOD_LR, BAD_LR, BAD_LR):
        study.enqueue_trial({"train.lr": lr})
    lines = []
    study = tune(recipe, 3, pruner=pruner, log=lines.append)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in study.trials] == [4, 2, 2]  # 8 epochs run instead of 12
    pruned = study_dir(recipe) / "trials" / "trial_0001"
    member = next((pruned / "members").iterdir())
    assert len((member / "history.csv").read_text().splitlines()) == 1 + 2
    assert not list(member.glob("*.pt"))  # a pruned trial keeps its history, not its checkpoints
    assert any("trial 1 pruned after 2 epochs" in line for line in lines)

    from kit.leaderboard import query
    rows = query(recipe.leaderboard, kind="trial").sort_values("name")
    assert list(rows["name"]) == ["trial_0", "trial_1", "trial_2"]
    assert [e["state"] for e in rows["extra"]] == ["complete", "pruned", "pruned"]
    assert rows["score"].iloc[0] == pytest.approx(study.best_value) and rows["score"].iloc[1:].isna().all()
    assert rows["extra"].iloc[0]["params"] == {"train.lr": GOOD_LR}


def test_failures_fail_the_trial_and_the_study_goes_on(base, monkeypatch):
    import torch
    import kit.member_train
    real = kit.member_train.train_member
    outcomes = iter(["oom", "nan", "error", "real"])

    def train_member(ctx, member, **kwargs):
        outcome = next(outcomes)
        if outcome == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if outcome == "error":
            raise ValueError("a broken image")
        rec = real(ctx, member, **kwargs)
        if outcome == "nan":
            rec["scores"]["none"]["log_loss"] = math.nan
        return rec

    monkeypatch.setattr(kit.member_train, "train_member", train_member)
    study = tune(make(base, trials=4), log=quiet)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    reasons = [t.user_attrs["fail_reason"] for t in study.trials[:3]]
    assert reasons[0].startswith("out of GPU memory") and "train.batch_size" in reasons[0]
    assert reasons[1] == "validation log_loss is nan"
    assert reasons[2] == "ValueError: a broken image"


def test_resume_continues_the_study(base, monkeypatch):
    recipe = make(base, top_k=2)
    assert len(tune(recipe, 2, log=quiet).trials) == 2

    import kit.member_train
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:  # Ctrl-C: not caught as a failed trial, it stops the study
        m.setattr(kit.member_train, "train_member", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tune(recipe, 5, log=quiet)

    study = tune(recipe, 1, log=quiet)  # the same storage: runs/tiny/study.sqlite
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].user_attrs["fail_reason"] == "interrupted"
    # seeded by trial number: a resumed study draws new values, not the first session's again
    assert study.trials[3].params not in [t.params for t in study.trials[:2]]
    trials = sorted(p.name for p in (recipe.run_dir / "trials").iterdir())
    assert trials == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]


def test_best_yaml_reproduces_the_best_trial(base):
    from kit.run import train
    # no pruner: the median pruner may stop the third trial after two (kit.tune._storage.MEDIAN_STARTUP_TRIALS)
    recipe = recipe_from_dict({**base, "ensemble": {"seeds": [5, 6]}, "search": {**base["search"], "pruner": "none"}})
    study = tune(recipe, 3, log=quiet)
    out = study_dir(recipe)
    best = load_recipe(out / "best.yaml")
    assert best.name == "tiny-best" and best.search.params == {}
    assert best.train.lr == study.best_params["train.lr"] and best.ensemble.seeds == [5, 6]
    assert yaml.safe_load((out / "best.yaml").read_text()).get("search") is None

    _, records = train(best, members="0", log=quiet)  # seed 5, fold 0: the trial's member
    assert records[0]["scores"]["none"]["log_loss"] == study.best_value  # exactly: same seed on CPU

    top = json.loads((out / "top_k.json").read_text())
    values = [t["value"] for t in top["trials"]]
    assert len(values) == 3 and values == sorted(values) and values[0] == study.best_value
    assert all(set(t["predictions"]) == {"oof", "test"} for t in top["trials"])
    assert (out / "optimization_history.png").stat().st_size > 0
    assert (out / "param_importances.png").stat().st_size > 0

    from kit.tune import blend_top_k
    methods = blend_top_k(out / "top_k.json", methods=["mean", "weights"])
    assert set(methods) == {"mean", "weights"} and all(math.isfinite(m.oof_score) for m in methods.values())


def test_one_param_skips_importances(base):
    recipe = make(base, params={"train.lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True}})
    lines = []
    tune(recipe, 2, log=lines.append)
    assert (study_dir(recipe) / "optimization_history.png").exists()
    assert not (study_dir(recipe) / "param_importances.png").exists()
    assert any("param importances need" in line for line in lines)


def test_a_new_study_refuses_old_trial_dirs(base):
    recipe = make(base)
    (recipe.run_dir / "trials" / "trial_0000").mkdir(parents=True)
    with pytest.raises(RecipeError, match="belong to an earlier study"):
        create_study(recipe)


def test_feature_extract_tunes_heads_over_cached_embeddings(base):
    pytest.importorskip("kit.features")
    recipe = recipe_from_dict({**base, "model": {**base["model"], "strategy": "feature_extract"},
                               "train": {**base["train"], "epochs": 3},
                               "search": {"pruner": "none", "params": {"train.lr": {"type": "float", "low": 1e-3,
                                                                                    "high": 0.3, "log": True}}}})
    study = tune(recipe, 3, log=quiet)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    extracted = [json.loads(next((recipe.run_dir / "trials" / f"trial_{n:04d}" / "members").glob("*/features.json"))
                            .read_text())["extracted"] for n in range(3)]
    assert extracted == [["none"], [], []]  # the first trial fills the cache ($KIT_CACHE_DIR), the others read it
