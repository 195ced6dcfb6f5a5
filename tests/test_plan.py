"""kit.plan: a recipe resolved once into its members, written as plan.json, and nothing resolved after it.
Also the bugs that lived in the seams the plan removed (each test failed before it)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import kit.advise
import kit.data.transforms
import kit.models.backbone
import kit.plan
import kit.runtime
import kit.train
from kit import run as R
from kit.cli import main
from kit.errors import KitError, RunDirError
from kit.leaderboard import query
from kit.context import prepare_run
from kit.plan import PLAN_FILE, load_plan, plan_to_dict
from kit.predictions import Predictions, load_predictions
from kit.recipe import Recipe, recipe_from_dict
from kit.rundir import pred_path


def quiet(msg):
    pass


def _recipe(kaggle_root, tmp_path, **over) -> Recipe:
    raw = {
        "name": "planned", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "num_workers": 0},
        "augment": {"input_size": 32, "crop_pct": 1.0},
        "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
        "tta": {"modes": ["none", "hflip"]},
        "ensemble": {"seeds": [0, 1]},
    }
    for key, value in over.items():
        section, _, k = key.partition(".")
        if k:
            raw.setdefault(section, {})[k] = value
        else:
            raw[section] = value
    return recipe_from_dict(raw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


def _fail(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called after the plan was made")
    return fail


def test_nothing_downstream_resolves_after_the_plan(kaggle_root, tmp_path, env, monkeypatch):
    """strategy auto, two backbones (one with its own TTA modes): planned once; then the functions that resolve
    `auto`, apply overrides or build a data config are made to fail, and a whole run still passes."""
    recipe = _recipe(kaggle_root, tmp_path, **{
        "model.strategy": "auto",
        "ensemble": {"seeds": [0], "backbones": [{}, {"model": {"backbone": "resnet10t"}, "tta": {"modes": ["vflip"]}}]}})
    ctx = prepare_run(recipe)
    plan = ctx.plan
    assert (ctx.run_dir / PLAN_FILE).is_file()
    assert all(m.recipe.model.strategy != "auto" for m in plan.members) and plan.advice
    assert [m.tta_modes for m in plan.members] == [("none", "hflip"), ("none", "vflip")]
    for m in plan.members:  # the model carries the planned data config
        model, _ = kit.models.backbone.build_model(m.recipe.model, 3, m.pretrained_cfg, load_weights=False)
        assert kit.models.backbone.model_data_config(model) == m.data_config
        assert m.data_config["input_size"] == 32 and m.data_config["crop_pct"] == 1.0

    real_with_overrides = Recipe.with_overrides

    def validation_only(self, overrides, source="<overrides>"):
        # recipe validation checks each ensemble.backbones entry by building its recipe: allowed inside kit/recipe/
        from pathlib import Path
        if Path(sys._getframe(1).f_code.co_filename).parent.name != "recipe":
            raise AssertionError("an override was applied after the plan was made")
        return real_with_overrides(self, overrides, source)
    monkeypatch.setattr(Recipe, "with_overrides", validation_only)
    for module, name in ((kit.advise, "cached_advice"), (kit.advise, "advise"), (kit.plan, "make_plan"),
                         (kit.plan, "_resolve_backbone"), (kit.models.backbone, "pretrained_overlay"),
                         (kit.models.backbone, "model_data_config"), (kit.data.transforms, "check_augment")):
        monkeypatch.setattr(module, name, _fail(f"{module.__name__}.{name}"))
    summary = R.run(recipe, log=quiet)
    assert summary.submission is not None and len(summary.configs) == 2
    # the per-backbone TTA override was predicted and considered (collect asked for each config's own modes)
    assert set(summary.configs[1].tta_scores) == {"none", "vflip"}
    assert set(summary.configs[0].tta_scores) == {"none", "hflip"}
    assert json.loads((ctx.run_dir / PLAN_FILE).read_text()) == plan_to_dict(plan)


def test_kit_plan_prints_the_plan_without_training(kaggle_root, tmp_path, env, monkeypatch, capsys):
    recipe = _recipe(kaggle_root, tmp_path, **{"model.strategy": "finetune", "model.frozen_stages": 1,
                                               "model.backbone_lr_scale": 0.1})
    path = tmp_path / "r.yaml"
    import yaml
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    monkeypatch.setattr(kit.train, "fit", _fail("fit"))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test_resnet-s0: 1 member(s)" in out and "test_resnet-s1" in out
    assert "lr 0.003" in out and "lr 0.0003" in out  # head and backbone groups
    assert "stages frozen by epoch: 1: 1" in out and "TTA modes none, hflip" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_an_unset_lr_is_the_resolved_strategys_default_stated_in_the_plan(kaggle_root, tmp_path, env):
    """train.lr unset: each member's recipe in the plan states its strategy's default (LR_BY_STRATEGY), the
    parameter groups carry it; a recipe's own lr is kept as it is."""
    from kit.recipe import LR_BY_STRATEGY
    assert LR_BY_STRATEGY["full"] != LR_BY_STRATEGY["finetune"]  # else this test proves nothing
    recipe = _recipe(kaggle_root, tmp_path, train={"epochs": 1, "batch_size": 8, "warmup_epochs": 0}, ensemble={
        "seeds": [0], "backbones": [{}, {"model": {"strategy": "finetune", "backbone_lr_scale": 0.1}},
                                    {"train": {"lr": 5e-4}}]})
    assert recipe.train.lr is None
    plan = prepare_run(recipe, write=False).plan
    full, finetune, own = plan.members
    assert full.recipe.train.lr == LR_BY_STRATEGY["full"]
    assert {g["lr"] for g in full.param_groups} == {LR_BY_STRATEGY["full"]}
    assert finetune.recipe.train.lr == LR_BY_STRATEGY["finetune"]
    assert sorted({g["lr"] for g in finetune.param_groups}) == pytest.approx(
        [0.1 * LR_BY_STRATEGY["finetune"], LR_BY_STRATEGY["finetune"]])
    assert own.recipe.train.lr == 5e-4 and {g["lr"] for g in own.param_groups} == {5e-4}
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        recipe.train.lr_for("auto")


def _timed(seconds: dict):
    """A stand-in for kit.runtime._time_steps: `seconds` a step for each variant timed."""
    return lambda model, size, device, variants, **k: {name: seconds[name] for name in variants}


def test_plan_json_is_reused_so_measured_choices_do_not_follow_the_machine_load(kaggle_root, tmp_path, env,
                                                                                 monkeypatch):
    """model.channels_last: null is timed once, in the plan; a rerun whose timing would come out the other way
    (load on the machine) reuses the plan and gives identical predictions."""
    import kit.runtime
    recipe = _recipe(kaggle_root, tmp_path, **{"model.channels_last": None, "ensemble": {"seeds": [0]}})
    monkeypatch.setattr(kit.runtime, "_time_steps", _timed({"contiguous": 2.0, "channels_last": 1.0}))
    R.run(recipe, log=quiet)
    run_dir = recipe.run_dir
    member = load_plan(run_dir / PLAN_FILE).members[0]
    assert member.channels_last is True
    first = load_predictions(pred_path(run_dir, member.name, "oof", "none")).probs
    import shutil
    shutil.rmtree(run_dir / "members")  # retrain from scratch, same plan
    (tmp_path / "cache" / "channels_last.json").unlink()
    monkeypatch.setattr(kit.runtime, "_time_steps", _timed({"contiguous": 1.0, "channels_last": 2.0}))
    R.run(recipe, log=quiet)
    assert load_plan(run_dir / PLAN_FILE).members[0].channels_last is True
    np.testing.assert_array_equal(load_predictions(pred_path(run_dir, member.name, "oof", "none")).probs, first)
    rows = query(recipe.leaderboard, kind="member")
    assert [e["env"]["memory_format"] for e in rows["extra"]] == ["channels_last"]  # one row: recorded idempotently


def test_leaderboard_rows_are_recorded_once_and_tagged_with_their_mode(kaggle_root, tmp_path, env):
    recipe = _recipe(kaggle_root, tmp_path)
    R.run(recipe, log=quiet)
    R.run(recipe, log=quiet)  # a second kit run, then kit submit, then kit predict with a new mode
    R.finish(prepare_run(recipe))
    R.predict(recipe.run_dir, ["vflip"], log=quiet)
    R.predict(recipe.run_dir, ["vflip"], log=quiet)
    df = query(recipe.leaderboard)
    counts = df.groupby(["kind", "name", "tta_mode"], dropna=False).size()
    assert counts.max() == 1, counts[counts > 1]
    members = df[df.kind == "member"]
    assert sorted(members["name"]) == ["test_resnet-s0-f0", "test_resnet-s1-f0"]
    assert set(members["tta_mode"]) == {"none"}
    done = json.loads((recipe.run_dir / "members" / "test_resnet-s0-f0" / "done.json").read_text())
    member_row = members[members.name == "test_resnet-s0-f0"].iloc[0]
    assert member_row["score"] == pytest.approx(done["scores"]["none"]["accuracy"])  # not the vflip score
    vflip = df[(df.kind == "tta") & (df.tta_mode == "vflip")]
    assert len(vflip) == 2
    assert len(df[df.kind == "submission"]) == 1
    assert len(df[df.kind == "ensemble"]) == len(recipe.ensemble.methods)


def test_modes_added_later_by_kit_predict_are_considered_by_kit_submit(kaggle_root, tmp_path, env, monkeypatch):
    recipe = _recipe(kaggle_root, tmp_path, **{"tta.modes": ["none"]})
    summary = R.run(recipe, log=quiet)
    assert all(set(c.tta_scores) == {"none"} for c in summary.configs)
    R.predict(recipe.run_dir, ["vflip"], log=quiet)
    # make vflip the better mode on every config, so that the pooled out-of-fold rule must pick it
    import kit.choice
    real = kit.choice.choose_tta
    seen = []
    monkeypatch.setattr("kit.results.choose_tta", lambda oofs, metric, fixed="auto", metrics=None: seen.append(set(oofs)) or
                        (kit.choice.Choice("vflip", "test") if "vflip" in oofs else real(oofs, metric, fixed, metrics)))
    again = R.finish(prepare_run(recipe))
    assert seen and all(s == {"none", "vflip"} for s in seen)
    assert all(c.tta == "vflip" for c in again.configs)


def test_missing_test_predictions_stop_kit_submit_naming_the_member_and_file(kaggle_root, tmp_path, env):
    recipe = _recipe(kaggle_root, tmp_path, **{"ensemble": {"seeds": [0]}})
    tta = R.run(recipe, log=quiet).configs[0].tta
    missing = pred_path(recipe.run_dir, "test_resnet-s0-f0", "test", tta)
    missing.unlink()
    with pytest.raises(RunDirError, match=rf"test_resnet-s0-f0 has no test predictions.*test_{tta}\.npz.*kit predict"):
        R.finish(prepare_run(recipe))
    assert main(["submit", str(recipe.run_dir)]) == 2


def test_cli_prints_kit_errors_as_one_line_and_lets_bugs_show_their_traceback(monkeypatch, capsys, tmp_path):
    import kit.context as run_module  # where every command reads a recipe or a run directory

    def user_error(*a, **k):
        raise RunDirError("runs/x holds a run of a different recipe")
    monkeypatch.setattr(run_module, "load_recipe_or_run", user_error)
    assert main(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: runs/x holds a run of a different recipe"

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(run_module, "load_recipe_or_run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["train", str(tmp_path)])
    assert issubclass(RunDirError, KitError)


def test_a_recipe_that_fails_on_its_data_locks_nothing(kaggle_root, tmp_path, env):
    bad = _recipe(kaggle_root, tmp_path, **{"data.label_column": "no_such_column"})
    with pytest.raises(KitError):
        prepare_run(bad)
    assert not (bad.run_dir / "recipe.hash").exists() and not (bad.run_dir / PLAN_FILE).exists()
    prepare_run(_recipe(kaggle_root, tmp_path))  # the corrected recipe is not refused as "a different recipe"


def test_bad_images_are_all_reported_before_training_or_left_out_and_listed(kaggle_root, tmp_path, env, monkeypatch):
    from kit.errors import DataError
    for name in ("img_003.jpg", "img_007.jpg"):
        (kaggle_root / "train" / name).write_bytes(b"not an image")
    (kaggle_root / "train" / "img_011.jpg").write_bytes((kaggle_root / "train" / "img_012.jpg").read_bytes()[:200])
    monkeypatch.setattr(kit.train, "fit", _fail("fit"))
    recipe = _recipe(kaggle_root, tmp_path, **{"ensemble": {"seeds": [0]}})
    with pytest.raises(DataError) as e:
        R.train(recipe, log=quiet)
    for name in ("img_003.jpg", "img_007.jpg", "img_011.jpg"):  # every bad file in one message, before training
        assert name in str(e.value)
    assert "bad_images: skip" in str(e.value) and not (recipe.run_dir / "recipe.hash").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    skip = recipe.with_overrides({"data.bad_images": "skip"})
    summary = R.run(skip, log=quiet)
    listed = (skip.run_dir / "bad_images.csv").read_text()
    assert all(n in listed for n in ("img_003", "img_007", "img_011")) and summary.bad_images == 3
    assert len(prepare_run(skip).sources.train) == 27
    assert json.loads((skip.run_dir / "summary.json").read_text())["bad_images"] == 3


@pytest.mark.parametrize("over", [{"augment.crop_pct": 1.0}, {"augment.crop_pct": 0.8},
                                  {"augment.crop_pct": 0.875, "tta.resize": 44}])
def test_the_validation_epoch_and_the_members_none_score_agree(kaggle_root, tmp_path, env, over):
    """fit validates each epoch through kit.train.evaluate (S x S crops); the member's `none` predictions come
    from kit.tta.predict_modes (R x R squares, centre view), and a teacher's from predict_rows. All three must give
    the same probabilities, also with tta.resize set (it used to cut `none` from another resize than validation)."""
    import pandas as pd
    from kit.member_predict import load_member_model, predict_rows
    recipe = _recipe(kaggle_root, tmp_path, **{**over, "ensemble": {"seeds": [0]}, "train.epochs": 2})
    ctx, records = R.train(recipe, log=quiet)
    history = pd.read_csv(ctx.run_dir / "members" / records[0]["member"] / "history.csv")
    best = history.iloc[records[0]["best_epoch"]]
    none = records[0]["scores"]["none"]
    assert best["val_accuracy"] == pytest.approx(none["accuracy"], abs=1e-9)
    assert best["val_log_loss"] == pytest.approx(none["log_loss"], abs=1e-5)
    member = ctx.plan.members[0]
    oof = load_predictions(pred_path(ctx.run_dir, member.name, "oof", "none"))
    cpu = kit.runtime.resolve_device("cpu")
    model, cfg, cl = load_member_model(ctx, member, cpu)
    rows = np.array([list(ctx.sources.train.ids).index(i) for i in oof.ids])
    np.testing.assert_allclose(predict_rows(ctx, member, model, cfg, cpu, cl, ctx.sources.train, rows), oof.probs,
                               atol=1e-5)


def test_summary_says_which_rule_chose_the_blend(capsys, tmp_path):
    from kit.cli import print_summary
    from kit.ensemble import MethodResult
    oof = Predictions(["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]]), ("x", "y"), np.array([0, 1]))
    configs = [R.ConfigResult(f"m-s{i}", "m", i, {"none": 0.9 - i / 10}, "none", oof, None) for i in range(2)]
    methods = {"best": MethodResult("best", np.array([1.0, 0.0]), 0.9, 0.9),
               "mean": MethodResult("mean", np.array([0.5, 0.5]), 0.85, 0.85),
               "greedy": MethodResult("greedy", np.array([0.7, 0.3]), 0.95, 0.88)}
    why = "best beats mean (the reference) by 0.0500 out-of-fold accuracy, more than 2 paired standard errors (0.01)"
    summary = R.Summary(tmp_path, "accuracy", configs, methods, "best", None, 1.0, [], chosen_why=why)
    print_summary(summary)
    assert f"blend chosen: best, {why}" in " ".join(capsys.readouterr().out.split())
    d = R.summary_dict(summary)
    assert d["best_member_kept"] and d["chosen_why"] == why


def test_summary_says_which_rule_chose_each_tta_mode(capsys, tmp_path):
    from kit.cli import print_summary
    oof = Predictions(["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]]), ("x", "y"), np.array([0, 1]))
    why = "accuracy of none, hflip within 2 paired standard errors of the best (none): lowest log loss of those"
    configs = [R.ConfigResult("m-s0", "m", 0, {"none": 0.9275, "hflip": 0.925}, "hflip", oof, None, (), why),
               R.ConfigResult("m-s1", "m", 1, {"none": 0.92}, "none", oof, None, (), "the only TTA mode")]
    summary = R.Summary(tmp_path, "accuracy", configs, {}, None, None, 1.0, [])
    print_summary(summary)
    out = capsys.readouterr().out
    assert f"TTA of m-s0: hflip, {why}" in " ".join(out.split())
    assert "TTA of m-s1" not in out  # one mode predicted: nothing was chosen
    assert R.summary_dict(summary)["tta_why"]["m-s0"] == why


def test_refit_retrains_each_holdout_member_on_every_image_for_its_chosen_epochs(kaggle_root, tmp_path, env,
                                                                                  capsys):
    import pandas as pd
    recipe = _recipe(kaggle_root, tmp_path, **{"data.refit": True, "train.epochs": 2})
    summary = R.run(recipe, log=quiet)
    ctx = prepare_run(recipe)
    refits = [m for m in ctx.plan.members if m.refit_of]
    assert [m.name for m in refits] == ["test_resnet-s0-refit", "test_resnet-s1-refit"]
    assert [m.index for m in ctx.plan.members[-2:]] == [2, 3]  # after the members they repeat
    for m in refits:
        done = json.loads((ctx.run_dir / "members" / m.name / "done.json").read_text())
        validated = json.loads((ctx.run_dir / "members" / m.refit_of / "done.json").read_text())
        history = pd.read_csv(ctx.run_dir / "members" / m.name / "history.csv")
        assert done["epochs"] == validated["best_epoch"] + 1 == len(history) and done["n_val"] == 0
        assert not [c for c in history.columns if c.startswith("val_")]  # nothing validated: all images trained
        assert not pred_path(ctx.run_dir, m.name, "oof", "none").exists()
    # the submission's test probabilities are the refitted members', at the validated members' TTA and weights
    for c in summary.configs:
        (refit,) = ctx.plan.refits(c.config)
        np.testing.assert_allclose(c.test.probs, load_predictions(pred_path(ctx.run_dir, refit.name, "test",
                                                                             c.tta)).probs, rtol=1e-6)
    rows = query(recipe.leaderboard, kind="member")
    assert set(rows[rows["score"].isna()]["name"]) == {"test_resnet-s0-refit", "test_resnet-s1-refit"}
    assert R.summary_dict(summary)["refits"] == {"test_resnet-s0": ["test_resnet-s0-refit"],
                                                 "test_resnet-s1": ["test_resnet-s1-refit"]}
    from kit.cli._commands import print_summary
    print_summary(summary)  # says what the submission is made of
    out = " ".join(capsys.readouterr().out.split())
    assert "test predictions of test_resnet-s0: its refit on every labelled image, at" in out


def test_refit_with_seeds_refits_each_validated_member_once_per_seed(kaggle_root, tmp_path, env):
    """One validated seed, three refitted ones (data.refit: [0, 5, 7], Kaggle practice): named by seed, each with
    its own train.seed, after the member they repeat; listed by kit plan and counted in its work."""
    recipe = _recipe(kaggle_root, tmp_path, **{"data.refit": [0, 5, 7], "ensemble": {"seeds": [0]}})
    plan = prepare_run(recipe).plan
    assert [(m.name, m.seed, m.recipe.train.seed, m.refit_of) for m in plan.members] == [
        ("test_resnet-s0-f0", 0, 0, None), ("test_resnet-s0-refit", 0, 0, "test_resnet-s0-f0"),
        ("test_resnet-s0-refit-s5", 5, 5, "test_resnet-s0-f0"), ("test_resnet-s0-refit-s7", 7, 7, "test_resnet-s0-f0")]
    assert [m.name for m in plan.refits("test_resnet-s0")] == [m.name for m in plan.members[1:]]
    assert list(plan.configs()) == ["test_resnet-s0"]  # refits are no configuration of their own
    n, n_val = plan.data["n_train"], round(0.2 * plan.data["n_train"])
    lines = kit.plan.format_plan(plan)  # kit plan shows them and counts their work (at most the planned epochs)
    (refit_line,) = [line for line in lines if "refit on all" in line]
    assert "test_resnet-s0-refit, test_resnet-s0-refit-s5, test_resnet-s0-refit-s7 (seed 0, 5, 7" in refit_line
    assert f"at most {n:,} training" in refit_line
    assert f"about {(n - n_val) + 3 * n:,} training" in lines[-1]
    assert recipe_from_dict({**recipe.to_dict(), "data": {**recipe.to_dict()["data"], "refit": True}}).data.refit is True
    for bad, why in (([1, 1], "seeds must be distinct"), ([], "at least one seed")):
        with pytest.raises(KitError, match=rf"data.refit.*{why}"):
            _recipe(kaggle_root, tmp_path, **{"data.refit": bad})


def test_a_member_being_trained_elsewhere_is_skipped_not_trained_twice(kaggle_root, tmp_path, env):
    from filelock import FileLock
    recipe = _recipe(kaggle_root, tmp_path, **{"ensemble": {"seeds": [0]}})
    ctx = prepare_run(recipe)
    member = ctx.plan.members[0]
    lock_file = ctx.run_dir / "members" / member.name / ".lock"
    lock_file.parent.mkdir(parents=True)
    logged = []
    with FileLock(str(lock_file)):  # another process (here: this test) is training it
        ctx, records = R.train(recipe, log=logged.append)
    assert records == [] and any("being trained by another process" in line for line in logged)
    assert not (ctx.run_dir / "members" / member.name / "done.json").exists()
    with pytest.raises(RunDirError, match="not finished"):
        R.finish(ctx)
    _, records = R.train(recipe, log=quiet)  # the lock released: trained once, recorded once
    assert len(records) == 1 and len(query(recipe.leaderboard, kind="member")) == 1


def test_workers_do_not_change_the_numbers(kaggle_root, tmp_path, env):
    """Each sample's augmentation is seeded from (member seed, epoch, row): 0 or 2 loader workers train the same
    member bit for bit."""
    import pandas as pd
    histories = []
    for workers in (0, 2):
        r = _recipe(kaggle_root, tmp_path, **{"name": f"w{workers}", "data.num_workers": workers,
                                              "ensemble": {"seeds": [0]}, "train.epochs": 2})
        _, records = R.train(r, log=quiet)
        h = pd.read_csv(r.run_dir / "members" / records[0]["member"] / "history.csv")
        histories.append((h[["train_loss", "val_log_loss"]].to_numpy(),
                          load_predictions(pred_path(r.run_dir, records[0]["member"], "test", "none")).probs))
    np.testing.assert_array_equal(histories[0][0], histories[1][0])
    np.testing.assert_array_equal(histories[0][1], histories[1][1])


def test_depthwise_taps_are_decided_in_the_plan_and_train_the_same_model(kaggle_root, tmp_path, env):
    """model.depthwise_taps (kit.models.depthwise): the plan fixes it, kit plan says it, the member trains with it
    and records it, and the model it trains is the one oneDNN's gradients train, float rounding apart."""
    results = {}
    for taps in (True, False):
        r = _recipe(kaggle_root, tmp_path, **{"name": f"taps{taps}", "model.backbone": "test_efficientnet",
                                              "model.depthwise_taps": taps, "ensemble": {"seeds": [0]},
                                              "train.epochs": 2})
        plan = prepare_run(r).plan
        assert [m.depthwise_taps for m in plan.members] == [taps]
        assert any("depthwise weight gradients by taps" in line for line in kit.plan.format_plan(plan)) == taps
        _, (record,) = R.train(r, log=quiet)
        assert record["environment"]["depthwise_taps"] is taps
        assert load_plan(r.run_dir / PLAN_FILE).members[0].depthwise_taps is taps
        rows = query(r.leaderboard, kind="member")
        (env,) = [e["env"] for e, name in zip(rows["extra"], rows["recipe_name"]) if name == r.name]
        assert env.get("depthwise_grad") == ("taps" if taps else None)
        results[taps] = load_predictions(pred_path(r.run_dir, record["member"], "test", "none")).probs
    np.testing.assert_allclose(results[True], results[False], atol=1e-4)
    extract = _recipe(kaggle_root, tmp_path, **{"name": "fx", "model.backbone": "test_efficientnet",
                                                "model.strategy": "feature_extract", "model.depthwise_taps": True})
    assert not any(m.depthwise_taps for m in prepare_run(extract).plan.members)  # no convolution trains


def test_a_resumed_run_uses_the_keys_outside_the_hash_as_given_now(kaggle_root, tmp_path, env):
    """The leaderboard URL, train.compile and data.num_workers change where and how fast a run goes, not what it
    computes: a resumed run used to keep plan.json's copies while recipe.yaml showed the new values."""
    first = _recipe(kaggle_root, tmp_path, **{"ensemble": {"seeds": [0]}})
    prepare_run(first)
    now = first.with_overrides({"leaderboard": str(tmp_path / "other.sqlite"), "data.num_workers": 1})
    ctx = prepare_run(now)
    assert ctx.plan.recipe_hash == load_plan(first.run_dir / PLAN_FILE).recipe_hash  # the same run
    assert ctx.recipe.leaderboard == now.leaderboard
    assert {m.recipe.leaderboard for m in ctx.plan.members} == {now.leaderboard}
    assert {m.recipe.data.num_workers for m in ctx.plan.members} == {1}
    assert "other.sqlite" in (first.run_dir / "recipe.yaml").read_text()
    with pytest.raises(RunDirError, match="holds a run of a different recipe"):
        prepare_run(first.with_overrides({"train.lr": 1e-2}))
