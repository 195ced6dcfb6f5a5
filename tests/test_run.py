"""kit.run end to end on the tiny Kaggle-style fixture: kfold (3 folds) x seeds [0, 1] of test_resnet, one epoch,
TTA none + hflip. Members, out-of-fold and test predictions, skipping finished members, --member selection,
the checked submission and its overwrite rule, the run directory's recipe hash, the ensemble summary."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import kit.train
from kit import run as R
from kit.ensemble import METHODS
from kit.context import prepare_run, select_members
from kit.pool import config_predictions
from kit.predictions import load_predictions
from kit.errors import RunDirError
from kit.leaderboard import query
from kit.recipe import RecipeError, recipe_from_dict
from kit.rundir import pred_path
from kit.submit import check_submission

MODES = ["none", "hflip"]


@pytest.fixture
def recipe(kaggle_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository (leaderboard default, runs/)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))  # nor in ~/.cache (channels_last timings)
    return recipe_from_dict({
        "name": "kfold", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "split": "kfold",
                 "folds": 3, "num_workers": 0},
        "augment": {"input_size": 32},
        # channels_last fixed: `null` times both formats, and the result would follow the machine's load
        "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
        "tta": {"modes": MODES},
        "ensemble": {"seeds": [0, 1]},
    })


@pytest.fixture
def fit_calls(monkeypatch):
    """Records the output folder of every kit.train.fit call (the real fit still runs)."""
    calls = []
    real = kit.train.fit

    def spy(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw):
        calls.append(out_dir.name)
        return real(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw)
    monkeypatch.setattr(kit.train, "fit", spy)
    return calls


def quiet(msg):
    pass


def test_members_are_seeds_times_folds(recipe):
    ctx = prepare_run(recipe)
    members = R.all_members(ctx)
    assert [m.name for m in members] == [f"test_resnet-s{s}-f{f}" for s in (0, 1) for f in (0, 1, 2)]
    assert [m.index for m in members] == list(range(6))
    assert [(m.seed, m.fold) for m in members] == [(s, f) for s in (0, 1) for f in (0, 1, 2)]
    assert [m.recipe.train.seed for m in members] == [m.seed for m in members]
    assert {m.config for m in members} == {"test_resnet-s0", "test_resnet-s1"}
    assert sorted(np.unique(ctx.folds)) == [0, 1, 2]
    assert (ctx.run_dir / "folds.csv").exists() and (ctx.run_dir / "recipe.yaml").exists()


def test_select_members(recipe):
    members = R.all_members(prepare_run(recipe))
    pick = lambda spec: [m.index for m in select_members(members, spec)]  # noqa: E731
    assert pick(None) == [0, 1, 2, 3, 4, 5]
    assert pick("0-2") == [0, 1, 2]
    assert pick("1,3") == [1, 3]
    assert pick("4") == [4]
    assert pick("1,0-1,5") == [0, 1, 5]
    with pytest.raises(RecipeError, match=r"members 0\.\.5, not \[6, 7\]"):
        select_members(members, "5-7")
    for bad in ("a", "1-x", "-1", ""):
        with pytest.raises(RecipeError, match="--member"):
            select_members(members, bad)


def test_run_dir_of_another_recipe_refuses(recipe):
    prepare_run(recipe)
    prepare_run(recipe.model_copy(update={"data": recipe.data.model_copy(update={"num_workers": 1})}))  # same hash
    other = recipe.model_copy(update={"train": recipe.train.model_copy(update={"lr": 0.1})})
    with pytest.raises(RunDirError, match=r"holds a run of a different recipe.*set a new `name:`"):
        prepare_run(other)
    with pytest.raises(RunDirError, match="different recipe"):
        R.train(other, log=quiet)


def test_end_to_end(recipe, fit_calls):
    # --member 0-2: only the seed-0 fold models train; nothing is blended or submitted while others are pending
    ctx, records = R.train(recipe, "0-2", log=quiet)
    assert fit_calls == ["test_resnet-s0-f0", "test_resnet-s0-f1", "test_resnet-s0-f2"]
    assert [r["member"] for r in records] == fit_calls
    assert sorted(p.name for p in (ctx.run_dir / "members").iterdir()) == fit_calls
    # kit submit with unfinished members refuses before writing or recording anything, with a hint that works
    with pytest.raises(RunDirError, match=r"3 of 6 members are not finished \(test_resnet-s1-f0.*"
                                          r"kit train .*kfold --member 3,4,5 --resume"):
        R.finish(ctx)
    assert not (ctx.run_dir / "submission.csv").exists() and not (ctx.run_dir / "ensemble").exists()
    assert not (ctx.run_dir / "summary.json").exists()
    assert set(query(recipe.leaderboard)["kind"]) == {"member", "tta"}
    pending = ["test_resnet-s1-f0", "test_resnet-s1-f1", "test_resnet-s1-f2"]

    # the whole run trains only the 3 members left
    summary = R.run(recipe, log=quiet)
    assert len(fit_calls) == 6 and fit_calls[3:] == pending
    assert summary.pending == [] and all(c.tta in MODES for c in summary.configs)
    for m in R.all_members(ctx):
        done = json.loads((ctx.run_dir / "members" / m.name / "done.json").read_text())
        assert (done["seed"], done["fold"], done["config"]) == (m.seed, m.fold, m.config)
        assert set(done["scores"]) == set(MODES) and done["n_val"] == 10

    _check_predictions(ctx, summary)
    _check_submission(ctx, summary, recipe)
    _check_ensemble(ctx, summary)

    # a second run trains nothing and writes the same submission
    before = summary.submission.read_text()
    again = R.run(recipe, log=quiet)
    assert len(fit_calls) == 6
    assert again.submission.read_text() == before

    # a different result does not overwrite the submission without force
    other = pd.read_csv(summary.submission, dtype=str)
    other["label"] = "fox"
    other.to_csv(summary.submission, index=False)
    changed = summary.submission.read_text()
    with pytest.raises(RunDirError, match="--force"):
        R.finish(ctx)
    assert summary.submission.read_text() == changed
    assert R.finish(ctx, force=True).submission.read_text() == before


def _check_predictions(ctx, summary):
    train_ids = sorted(ctx.sources.train.ids)
    assert [c.config for c in summary.configs] == ["test_resnet-s0", "test_resnet-s1"]
    members = R.all_members(ctx)
    for c in summary.configs:
        ms = [m for m in members if m.config == c.config]
        for mode in MODES:
            oof, test = config_predictions(ctx.run_dir, ms, mode)
            assert sorted(oof.ids) == train_ids  # each labelled image exactly once
            assert np.allclose(oof.probs.sum(axis=1), 1, atol=1e-5)
            label_of = dict(zip(ctx.sources.train.ids, ctx.sources.train.labels))
            assert list(oof.labels) == [label_of[i] for i in oof.ids]
            fold_tests = [load_predictions(pred_path(ctx.run_dir, m.name, "test", mode)) for m in ms]
            assert len(fold_tests) == 3 and not np.allclose(fold_tests[0].probs, fold_tests[1].probs)
            assert list(test.ids) == list(ctx.sources.test.ids)
            np.testing.assert_allclose(test.probs, np.mean([t.reorder(test.ids).probs for t in fold_tests], axis=0),
                                       rtol=1e-6)
        assert sorted(c.oof.ids) == train_ids
        assert set(c.tta_scores) == set(MODES)


def _check_submission(ctx, summary, recipe):
    sample = pd.read_csv(ctx.sources.sample_submission_path, dtype=str)
    sub = pd.read_csv(summary.submission, dtype=str)
    assert summary.submission == ctx.run_dir / "submission.csv"
    assert list(sub.columns) == list(sample.columns) == ["id", "label"]
    assert list(sub["id"]) == list(sample["id"])  # the sample's ids, in its order
    assert set(sub["label"]) <= {"cat", "dog", "fox"}
    check_submission(sub, sample, ctx.sources.train.classes)


def _check_ensemble(ctx, summary):
    d = json.loads((ctx.run_dir / "summary.json").read_text())
    assert set(d["methods"]) == set(METHODS)
    for name, res in d["methods"].items():
        assert 0 <= res["oof"] <= 1 and 0 <= res["nested"] <= 1, name
        if name in ("mean", "gmean", "rank"):  # nothing fitted: the nested score is the oof score
            assert res["nested"] == res["oof"]
    assert d["chosen"] in METHODS and d["chosen"] == summary.chosen
    assert d["best_member"] in ("test_resnet-s0", "test_resnet-s1")
    assert d["best_member_score"] == max(d["members"][c][d["tta_by_member"][c]] for c in d["members"])
    # greedy selection starts from the best member and only keeps steps that improve the oof metric, so in
    # sample it is never worse than the best member. The chosen method is picked by its nested score and
    # `weights` minimises log loss, not accuracy: their oof accuracy can be below the best member's.
    assert d["methods"]["greedy"]["oof"] >= d["best_member_score"] - 1e-9
    if d["chosen"] == "greedy":
        assert d["gain_oof"] >= -1e-9
    assert d["gain_oof"] == pytest.approx(d["methods"][d["chosen"]]["oof"] - d["best_member_score"])
    assert d["gain_nested"] == pytest.approx(d["methods"][d["chosen"]]["nested"] - d["best_member_score"])
    report = json.loads((ctx.run_dir / "ensemble" / "report.json").read_text())
    assert report["chosen"] == d["chosen"] and report["members"] == ["test_resnet-s0", "test_resnet-s1"]
    for name in METHODS:
        assert (ctx.run_dir / "ensemble" / f"test_{name}.npz").exists()
        w = np.asarray(report["methods"][name]["weights"])
        assert w.shape == (2,) and w.min() >= 0 and w.sum() == pytest.approx(1)
    chosen = load_predictions(ctx.run_dir / "ensemble" / f"test_{d['chosen']}.npz")
    sub = pd.read_csv(summary.submission, dtype=str)
    classes = list(chosen.classes)
    assert list(sub["label"]) == [classes[k] for k in chosen.reorder(sub["id"].to_numpy()).probs.argmax(axis=1)]


def test_interrupted_member_resumes_only_when_asked(recipe, fit_calls):
    ctx, _ = R.train(recipe, "0", log=quiet)
    done = ctx.run_dir / "members" / "test_resnet-s0-f0" / "done.json"
    first = json.loads(done.read_text())
    done.unlink()  # as if the process died after the last epoch's checkpoint
    with pytest.raises(RunDirError, match="--resume"):
        R.train(recipe, "0", resume=False, log=quiet)
    _, records = R.train(recipe, "0", resume=True, log=quiet)
    assert fit_calls == ["test_resnet-s0-f0"] * 3
    assert records[0]["scores"] == first["scores"] and records[0]["best_epoch"] == first["best_epoch"]
    assert done.exists()


def test_predict_adds_tta_modes_to_finished_members_from_any_directory(recipe, tmp_path, monkeypatch):
    recipe = recipe.model_copy(update={"output_dir": "runs"})  # relative, as in a recipe file
    ctx, _ = R.train(recipe, "0", log=quiet)
    run_dir = ctx.run_dir.resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    logged = []
    scores = R.predict(run_dir, modes=["vflip"], log=logged.append)
    assert list(scores) == ["test_resnet-s0-f0"]
    assert set(scores["test_resnet-s0-f0"]) == {"none", "hflip", "vflip"}
    assert len(logged) == 5 and all("not finished" in line for line in logged)
    for split in ("oof", "test"):
        assert pred_path(run_dir, "test_resnet-s0-f0", split, "vflip").exists()
    done = json.loads((run_dir / "members" / "test_resnet-s0-f0" / "done.json").read_text())
    assert set(done["scores"]) == {"none", "hflip", "vflip"}
    assert not (elsewhere / "runs").exists()  # nothing made beside the caller
    with pytest.raises(RunDirError, match="is not a run directory"):
        R.predict(elsewhere)
    with pytest.raises(RecipeError, match="--tta spin is not a TTA mode"):
        R.predict(run_dir, modes=["spin"])
    (elsewhere / "renamed").mkdir()
    (elsewhere / "renamed" / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text())
    with pytest.raises(RunDirError, match="holds the run named 'kfold'"):
        R.predict(elsewhere / "renamed")


def test_single_configuration_on_digits_is_submitted_and_scored(tmp_path, monkeypatch):
    """One member (holdout, one seed): nothing to blend, the member's test predictions are the submission;
    digits knows its test answers, so the submission gets public/private scores and a leaderboard row."""
    monkeypatch.chdir(tmp_path)
    recipe = recipe_from_dict({
        "name": "digits", "output_dir": "runs", "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {"source": "digits", "limit": 90, "num_workers": 0},
        "augment": {"input_size": 32, "train": []},
        "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
        "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
    })
    summary = R.run(recipe, log=quiet)
    assert [c.config for c in summary.configs] == ["test_resnet-s0"]
    assert summary.methods == {} and summary.chosen is None and summary.tta == "none"
    d = json.loads((summary.run_dir / "summary.json").read_text())
    assert d["chosen"] is None and "gain_oof" not in d and d["best_member"] == "test_resnet-s0"
    sub = pd.read_csv(summary.submission, dtype=str)
    best = summary.configs[0].test
    assert list(sub["label"]) == [best.classes[k] for k in best.reorder(sub["id"].to_numpy()).probs.argmax(1)]
    t = summary.test_scores
    assert t["metric"] == "accuracy" and 0 <= t["public"] <= 1 and 0 <= t["private"] <= 1
    assert t["n_public"] + t["n_private"] == len(sub)
    from kit.leaderboard import query
    rows = query(str(tmp_path / "lb.sqlite"))
    assert set(rows["kind"]) >= {"member", "submission"}
