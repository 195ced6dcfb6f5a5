"""kit.pseudo: pseudo-label rounds and distillation, and their leakage rules, on the tiny Kaggle-style fixture."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kit import run as R
from kit.cli import main
from kit.errors import RecipeError
from kit.leaderboard import query
from kit.context import prepare_run
from kit.predictions import Predictions, load_predictions
from kit.pseudo import distill_recipe, mixed_targets, one_hot, select_pseudo, soften
from kit.recipe import recipe_from_dict
from kit.rundir import member_dir, pred_path


def quiet(msg):
    pass


def _recipe(kaggle_root, tmp_path, **sections):
    raw = {
        "name": "pl", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "num_workers": 0,
                 "split": "kfold", "folds": 3},
        "augment": {"input_size": 32, "crop_pct": 1.0},
        "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
        "tta": {"modes": ["none"]},
        "ensemble": {"seeds": [0, 1]},
    }
    raw.update(sections)
    return recipe_from_dict(raw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


def test_selection_and_targets():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.55, 0.45]], dtype=np.float32)
    pred = Predictions([f"t{i}" for i in range(5)], probs, ("a", "b"))
    rows, targets = select_pseudo(pred, threshold=0.85, top_fraction=None, soft=False)
    assert rows.tolist() == [0, 3] and targets.tolist() == [[1, 0], [0, 1]]
    rows, targets = select_pseudo(pred, threshold=None, top_fraction=0.5, soft=True)
    # the most confident half of each predicted class: class a (rows 0, 1, 4) keeps 2, class b (rows 2, 3) keeps 1
    assert rows.tolist() == [0, 1, 3] and np.allclose(targets.sum(1), 1)
    np.testing.assert_allclose(targets, probs[[0, 1, 3]], atol=1e-6)
    assert np.allclose(soften(probs, 1.0), probs, atol=1e-6)
    assert soften(probs, 4.0)[0, 0] < 0.95  # a higher temperature spreads the mass
    mixed = mixed_targets([0, 1], probs[:2], alpha=0.5, temperature=1.0)
    np.testing.assert_allclose(mixed, 0.5 * one_hot([0, 1], 2) + 0.5 * probs[:2], atol=1e-6)


def test_pseudo_round_learns_per_fold_and_never_validates_on_test_images(kaggle_root, tmp_path, env):
    recipe = _recipe(kaggle_root, tmp_path, pseudo={"rounds": 1, "threshold": 0.01})
    summary = R.run(recipe, log=quiet)
    ctx = prepare_run(recipe)
    round0 = {m.fold: [x.name for x in ctx.plan.members if x.round == 0 and x.fold == m.fold]
              for m in ctx.plan.members}
    train_ids = set(ctx.sources.train.ids)
    for m in (x for x in ctx.plan.members if x.round == 1):
        info = json.loads((member_dir(ctx.run_dir, m.name) / "targets.json").read_text())
        # every pseudo-label of the fold-k member comes from round-0 models of fold k: none trained on fold k
        assert sorted(info["test_teachers"]) == sorted(round0[m.fold]) and info["fold"] == m.fold
        assert info["test_images"] == len(ctx.sources.test)
        oof = load_predictions(pred_path(ctx.run_dir, m.name, "oof", "none"))
        assert set(oof.ids) <= train_ids and len(oof) == int((ctx.folds == m.fold).sum())  # no test image scored
    assert [c.config for c in summary.configs] == ["test_resnet-s0-r1", "test_resnet-s1-r1"]
    rounds = json.loads((recipe.run_dir / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0]
    names = set(query(recipe.leaderboard, kind="ensemble")["name"])
    assert {"ensemble:mean:round0", "ensemble:mean"} <= names  # each round is on the leaderboard
    from kit.leaderboard import rank
    members = rank(query(recipe.leaderboard, kind="member"))
    assert len(members) == 6 and set(members["n"]) == {2}  # per round and fold, the seeds grouped; rounds apart
    # the last round submits: kit.load, kit export and kit predict --images read it (they failed on every
    # pseudo-label run: the reader grouped the members of every round, the report lists the last round's)
    import kit
    from kit.bundle import export_bundle
    ens = kit.load(recipe.run_dir)
    assert ens.members == ["test_resnet-s0-r1", "test_resnet-s1-r1"]
    submitted = load_predictions(recipe.run_dir / "ensemble" / f"test_{summary.chosen}.npz")
    np.testing.assert_allclose(ens.predict_table(ctx.sources.test), submitted.reorder(ctx.sources.test.ids).probs,
                               atol=1e-5)
    bundle = export_bundle(recipe.run_dir, tmp_path / "bundle")
    np.testing.assert_allclose(kit.load(bundle).predict_table(ctx.sources.test),
                               submitted.reorder(ctx.sources.test.ids).probs, atol=1e-5)
    assert main(["predict", str(recipe.run_dir), "--images", str(kaggle_root / "test"), "--output",
                 str(tmp_path / "pred.csv")]) == 0


def test_the_teacher_blends_tempered_probabilities_as_the_submission_did(tmp_path):
    """Under ensemble.temperature the blend's weights (or stacker) are fitted on each configuration's tempered
    probabilities; the pseudo-label and distillation teacher used to apply them to raw ones."""
    from types import SimpleNamespace
    from kit.ensemble import MethodResult, apply_method, apply_temperature
    from kit.predictions import save_predictions
    from kit.pseudo import fold_blend, load_teacher
    from kit.report import BlendReport, method_dict, write_report
    rng = np.random.default_rng(0)
    ids, classes = [f"t{i}" for i in range(20)], ("a", "b", "c")
    probs = [rng.dirichlet([1, 1, 1], 20).astype(np.float32) for _ in range(2)]
    members = [SimpleNamespace(config=f"m-s{i}", fold=0, name=f"m-s{i}-f0") for i in range(2)]
    for m, p in zip(members, probs):
        save_predictions(Predictions(ids, p, classes), pred_path(tmp_path, m.name, "test", "none"))
    weights = MethodResult("weights", np.array([0.7, 0.3]), 0.9, 0.9)
    write_report(tmp_path / "ensemble", BlendReport("accuracy", "weights", "test", ["m-s0", "m-s1"],
                                                    {"m-s0": "none", "m-s1": "none"}, [0.5, 2.0],
                                                    {"weights": method_dict(weights)}, "m-s0", 0.9))
    plan = SimpleNamespace(members=members, data={"classes": list(classes)})
    got, sources = fold_blend(load_teacher(tmp_path, plan), 0)
    tempered = apply_method([apply_temperature(p, t) for p, t in zip(probs, (0.5, 2.0))], weights)
    np.testing.assert_allclose(got.probs, tempered, atol=1e-6)
    assert not np.allclose(got.probs, apply_method(probs, weights), atol=1e-3)
    assert sources == ["m-s0-f0", "m-s1-f0"]


def test_distilled_student_learns_from_the_teachers_of_its_fold_and_is_a_member(kaggle_root, tmp_path, env, capsys):
    teacher = _recipe(kaggle_root, tmp_path)
    R.run(teacher, log=quiet)
    student = distill_recipe(teacher.run_dir, "test_efficientnet", [("model.weights", "none")])
    assert student.distill.teacher == str(teacher.run_dir.resolve()) and student.seeds == [0]
    summary = R.run(student, log=quiet)
    sctx = prepare_run(student)
    tctx = prepare_run(teacher)
    np.testing.assert_array_equal(sctx.folds, tctx.folds)  # the teacher's folds
    for m in sctx.plan.members:
        info = json.loads((member_dir(sctx.run_dir, m.name) / "targets.json").read_text())
        fold_teachers = sorted(x.name for x in tctx.plan.members if x.fold == m.fold)
        assert sorted(info["train_teachers"]) == fold_teachers == sorted(info["test_teachers"])
    # the student's predictions are saved and blended like any member's
    assert summary.submission.exists() and len(summary.configs) == 1
    assert pred_path(sctx.run_dir, sctx.plan.members[0].name, "test", "none").exists()
    assert set(query(student.leaderboard, kind="member")["recipe_name"]) == {"pl", "pl-distill-test_efficientnet"}
    with pytest.raises(RecipeError, match="mixup"):
        R.train(distill_recipe(teacher.run_dir, "test_efficientnet", [("train.mixup", 0.2), ("name", "mx")]),
                log=quiet)
    assert main(["distill", str(teacher.run_dir), "--into", "test_efficientnet", "--set", "model.weights=none",
                 "--set", "name=cli_student"]) == 0
    assert "teacher (" in capsys.readouterr().out
