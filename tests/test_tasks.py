"""Every shape of competition end to end (kit.task): a binary target with patient groups scored by ROC AUC,
several labels per image (tags) scored by F2 per image, ordinal grades scored by quadratic weighted kappa, and real
values scored by RMSE; each on a tiny Kaggle folder of real PNG files with a tiny timm model. The submission is
made in the task's format, checked against the sample, and kit.load(...).predict, `kit predict` and a bundle give
the same values, the decision rule fitted out of fold applied by each alike. Bad targets: one clear error each,
before any training."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kit
from kit import run as R
from kit.context import prepare_run
from kit.data import load_sources
from kit.data.sources import DataSourceError
from kit.decision import apply_decision, fit_decision, fit_rule
from kit.errors import RecipeError
from kit.recipe import DataSpec, TaskSpec, recipe_from_dict
from kit.report import read_report
from kit.task import Task, decide, detect_kind, label_values

from conftest import _save

N_TRAIN, N_TEST = 32, 8
TAGS = ("red", "green", "blue")


def _image(rng, bars: list[int]) -> np.ndarray:
    """A 32 px image with a bright vertical bar in each colour channel of `bars` (0 red, 1 green, 2 blue)."""
    img = rng.normal(50, 12, (32, 32, 3))
    for c in bars:
        x = int(rng.integers(4, 26))
        img[:, x:x + 4, c] = 230
    return np.clip(img, 0, 255).astype(np.uint8)


def _folder(tmp_path, kind: str):
    """(root, target column) of a tiny Kaggle folder whose images show their target: bars of the tags present;
    binary: a red bar or not; ordinal: as many bars as the grade (0-3); regression: the grade plus noise."""
    rng = np.random.default_rng(7)
    root = tmp_path / kind
    rows, test = [], []
    for i in range(N_TRAIN + N_TEST):
        if kind == "multilabel":
            bars = sorted({int(c) for c in rng.choice(3, size=int(rng.integers(0, 3)), replace=False)})
            target = " ".join(TAGS[c] for c in bars)
        elif kind == "binary":
            bars = [0] if i % 3 == 0 else [1]
            target = int(bars == [0])
        else:
            k = i % 4
            bars = list(range(k))[:3]
            target = k if kind == "ordinal" else round(10.0 * k + float(rng.normal(0, 1)), 2)
        image_id = f"im{i:04d}"
        split = "train" if i < N_TRAIN else "test"
        _save(root / split / f"{image_id}.png", _image(rng, bars))
        (rows if i < N_TRAIN else test).append((image_id, target, f"P{i // 4}"))
    col = {"multilabel": "tags", "binary": "target", "ordinal": "level", "regression": "score"}[kind]
    df = pd.DataFrame(rows, columns=["image_id", col, "patient_id"])
    if kind != "binary":
        df = df.drop(columns="patient_id")
    df.to_csv(root / "train.csv", index=False)
    blank = {"multilabel": "red", "binary": 0.5, "ordinal": 0, "regression": 0.0}[kind]
    pd.DataFrame({"image_id": [t[0] for t in test], col: blank}).to_csv(root / "sample_submission.csv", index=False)
    return root, col


def _recipe(tmp_path, root, col, kind, **over):
    raw = {"name": f"task_{kind}", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
           "data": {"source": "kaggle", "root": str(root), "id_column": "image_id", "label_column": col,
                    "image_suffix": ".png", "num_workers": 0, "split": "kfold", "folds": 2},
           "augment": {"input_size": 32, "crop_pct": 1.0},
           "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
           "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
           "tta": {"modes": ["none", "hflip"]}, "ensemble": {"seeds": [0, 1]}}
    if kind == "binary":
        raw["data"]["group_column"] = "patient_id"
    for key, value in over.items():
        section, _, k = key.partition(".")
        raw.setdefault(section, {})[k] = value
    return recipe_from_dict(raw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


def quiet(*_):
    pass


@pytest.mark.parametrize("kind, metric, fmt", [("binary", "roc_auc", "proba"), ("multilabel", "f2_samples", "label"),
                                               ("ordinal", "qwk", "label"), ("regression", "rmse", "label")])
def test_each_task_runs_submits_and_predicts_alike(tmp_path, env, kind, metric, fmt):
    root, col = _folder(tmp_path, kind)
    recipe = _recipe(tmp_path, root, col, kind)
    summary = R.run(recipe, log=quiet)
    ctx = prepare_run(recipe)
    task = ctx.task
    assert task.kind == kind and task.metric == metric == summary.metric
    if kind == "binary":  # no patient in two folds
        groups = ctx.sources.train.groups
        assert all(len(set(ctx.folds[groups == g])) == 1 for g in set(groups))
    sub = pd.read_csv(summary.submission, keep_default_na=False, dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["image_id"]) == list(sample["image_id"])
    values = sub[col]
    if kind == "binary":
        p = values.astype(float)
        assert ((p >= 0) & (p <= 1)).all() and p.nunique() > 1  # a probability, not a label
    elif kind == "multilabel":
        assert all(t in TAGS for v in values for t in v.split())
    elif kind == "ordinal":
        assert set(values.astype(int)) <= {0, 1, 2, 3}
    else:
        assert np.isfinite(values.astype(float)).all()
    # the same values from kit.load (the run) and from a bundle, with the run's decision rule applied by each
    report = read_report(recipe.run_dir / "ensemble" / "report.json", "")
    ens = kit.load(recipe.run_dir)
    assert ens.task == task and ens.blend.rule == report.rule
    files = [str(root / "test" / f"{i}.png") for i in sample["image_id"]]
    probs = ens.predict(files, ids=list(sample["image_id"]))
    labels = ens.predict_labels(files, ids=list(sample["image_id"]))
    submitted = label_values(task, probs.to_numpy())[0] if fmt == "label" else list(probs.iloc[:, 0])
    got = [str(v) for v in submitted]
    if kind in ("binary", "regression"):
        np.testing.assert_allclose(np.asarray(got, float), values.astype(float), rtol=1e-4, atol=1e-5)
    else:
        assert got == list(values)
        assert [str(v) for v in labels] == list(values)
    from kit.bundle import export_bundle
    bundle = export_bundle(recipe.run_dir, tmp_path / "bundle.zip", as_zip=True)
    np.testing.assert_allclose(kit.load(bundle).predict(files, ids=list(sample["image_id"])).to_numpy(),
                               probs.to_numpy(), rtol=1e-5, atol=1e-6)


def test_metric_direction_and_choice_for_rmse(tmp_path, env):
    """Lower is better for RMSE: early stopping keeps the lowest epoch, blends compare the right way."""
    root, col = _folder(tmp_path, "regression")
    recipe = _recipe(tmp_path, root, col, "regression", **{"train.epochs": 3})
    R.run(recipe, log=quiet)
    hist = pd.read_csv(recipe.run_dir / "members" / "test_resnet-s0-f0" / "history.csv")
    done = pd.read_json(recipe.run_dir / "members" / "test_resnet-s0-f0" / "done.json", typ="series")
    assert int(done["best_epoch"]) == int(hist["val_rmse"].idxmin())


@pytest.mark.parametrize("kind, bad, match", [
    ("binary", {"target": 2}, r"binary target is 0 or 1"),
    ("ordinal", {"level": "two"}, r"not a number"),
    ("regression", {"score": None}, r"empty at row 3"),
])
def test_bad_targets_are_one_clear_error_before_training(tmp_path, kind, bad, match):
    root, col = _folder(tmp_path, kind)
    df = pd.read_csv(root / "train.csv")
    for c, v in bad.items():
        df[c] = df[c].astype(object)
        df.loc[3, c] = v
    df.to_csv(root / "train.csv", index=False)
    spec = DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col, image_suffix=".png")
    with pytest.raises(DataSourceError, match=match) as e:
        load_sources(spec, TaskSpec(kind=kind))
    assert "train.csv" in str(e.value) and "line 5" in str(e.value)


def test_grade_outside_the_declared_range_and_missing_groups(tmp_path):
    root, col = _folder(tmp_path, "ordinal")
    spec = DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col, image_suffix=".png")
    with pytest.raises(DataSourceError, match=r"outside task.range \[0, 2\]"):
        load_sources(spec, TaskSpec(kind="ordinal", range=[0, 2]))
    root, col = _folder(tmp_path, "binary")
    df = pd.read_csv(root / "train.csv")
    df.loc[5, "patient_id"] = None
    df.to_csv(root / "train.csv", index=False)
    spec = DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col, image_suffix=".png",
                    group_column="patient_id")
    with pytest.raises(DataSourceError, match=r"'patient_id' \(data.group_column\) is empty"):
        load_sources(spec)


def test_unseen_tag_in_the_sample_and_sample_columns_that_fit_no_task(tmp_path):
    root, col = _folder(tmp_path, "multilabel")
    sample = pd.read_csv(root / "sample_submission.csv")
    sample[col] = "red purple"
    sample.to_csv(root / "sample_submission.csv", index=False)
    spec = DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col, image_suffix=".png")
    with pytest.raises(DataSourceError, match=r"tags that no labelled image has, e.g. \['purple'\]"):
        load_sources(spec)
    root, col = _folder(tmp_path, "regression")
    sample = pd.read_csv(root / "sample_submission.csv")
    sample["other"] = 1
    sample.to_csv(root / "sample_submission.csv", index=False)
    spec = DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col, image_suffix=".png")
    with pytest.raises(DataSourceError, match=r"fit no submission of this task: a regression target is submitted"):
        load_sources(spec)


def test_a_row_without_tags_is_valid(tmp_path):
    root, col = _folder(tmp_path, "multilabel")
    df = pd.read_csv(root / "train.csv", keep_default_na=False)
    assert (df[col] == "").any()  # the folder has images without any tag
    s = load_sources(DataSpec(source="kaggle", root=str(root), id_column="image_id", label_column=col,
                              image_suffix=".png"))
    assert s.task.kind == "multilabel" and s.task.outputs == tuple(sorted(TAGS))
    assert (s.train.labels.sum(axis=1) == 0).any()


def test_task_options_a_kind_cannot_use_are_refused(tmp_path, env):
    root, col = _folder(tmp_path, "regression")
    for key, value, match in [("train.mixup", 0.2, "train.mixup"), ("tta.merge", "gmean", "tta.merge"),
                              ("train.metric", "accuracy", "does not score a regression"),
                              ("ensemble.methods", ["mean", "stack"], "do not blend a regression"),
                              ("pseudo.rounds", 1, "pseudo.rounds")]:
        with pytest.raises(RecipeError, match=match):
            prepare_run(_recipe(tmp_path, root, col, "regression", **{key: value}))


def test_detect_kind_reads_the_values():
    def kind(values, col="y", **spec):
        df = pd.DataFrame({col: values})
        return detect_kind(df, DataSpec(label_column=col, **spec))[:3:2]
    assert kind(["a b", "b", "a c", "c", "a"]) == ("multilabel", True)
    assert kind(["cat", "dog", "ankle boot", "cat"]) == ("multiclass", True)
    assert kind([0, 1, 1, 0]) == ("binary", True)
    assert kind([0.5, 3.25, 7.0]) == ("regression", True)
    assert kind(list(range(30))) == ("regression", True)
    assert kind([0, 1, 2, 3, 4], col="level") == ("ordinal", True)
    assert kind([0, 1, 2, 3, 4], col="label") == ("multiclass", True)
    assert kind([0, 1, 2, 3, 4], col="x") == ("multiclass", False)  # kit init asks (--task)


def test_decision_rules_are_monotone_and_fitted_where_they_help():
    rng = np.random.default_rng(0)
    # several labels whose probabilities are all too low: thresholds near 0.5 miss the positives
    y = (rng.random((400, 3)) < 0.3).astype(np.int64)
    p = np.clip(0.25 * y + rng.normal(0.1, 0.05, y.shape), 0.001, 0.999)
    task = Task("multilabel", ("a", "b", "c"), "f2_samples")
    rule = fit_decision(task, y, p)
    assert rule["kept"] and rule["nested"] > rule["default"] + 0.2
    q = apply_decision(rule, p)
    assert np.all(np.diff(q[np.argsort(p[:, 0]), 0]) >= -1e-6)  # monotone: AUC unchanged
    assert np.array_equal(decide(task, q), (p >= np.asarray(rule["values"])).astype(int))
    # grades regressed too low by one: cut-points move down
    g = rng.integers(0, 5, 500)
    v = g - 0.8 + rng.normal(0, 0.2, g.shape)
    ot = Task("ordinal", ("level",), "qwk", low=0, high=4)
    cut = fit_rule(ot, g, v[:, None])
    assert cut["kind"] == "cuts" and np.all(np.diff(cut["values"]) > 0) and cut["values"][0] < 0
    assert (decide(ot, apply_decision(cut, v[:, None])) == g).mean() > 0.9
    # a metric of the scores themselves has no rule
    assert fit_decision(Task("binary", ("t",), "roc_auc"), y[:, 0], p[:, :1]) is None


@pytest.mark.parametrize("kind, head", [("regression", "ridge"), ("binary", "logreg"), ("multilabel", "linear")])
def test_feature_extract_heads_fit_every_task(tmp_path, env, kind, head):
    """Cached embeddings and a shallow head: per-label logistic regressions, a ridge regression of the value, a
    torch head on the task's loss; predicted back through the installed head as the run predicted."""
    root, col = _folder(tmp_path, kind)
    recipe = _recipe(tmp_path, root, col, kind, **{"model.strategy": "feature_extract", "model.head": head,
                                                    "ensemble.seeds": [0], "train.epochs": 3})
    summary = R.run(recipe, log=quiet)
    assert summary.submission is not None and np.isfinite(summary.validation_score())
    ens = kit.load(recipe.run_dir)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    files = [str(root / "test" / f"{i}.png") for i in sample["image_id"]]
    sub = pd.read_csv(summary.submission, keep_default_na=False, dtype=str)
    got = [str(v) for v in ens.predict_labels(files, ids=list(sample["image_id"]))]
    if kind == "multilabel":
        assert got == list(sub[col])
    else:
        want = sub[col].astype(float) if kind == "binary" else sub[col].astype(float)
        have = ens.predict(files, ids=list(sample["image_id"])).iloc[:, 0] if kind == "binary" else \
            np.asarray(got, float)
        np.testing.assert_allclose(np.asarray(have, float), want, rtol=1e-4, atol=1e-5)


def test_head_that_does_not_fit_the_task_is_refused(tmp_path, env):
    root, col = _folder(tmp_path, "regression")
    with pytest.raises(RecipeError, match=r"'model.head' .* 'logreg', which does not fit a regression"):
        prepare_run(_recipe(tmp_path, root, col, "regression", **{"model.strategy": "feature_extract",
                                                                    "model.head": "logreg"}))


def test_kit_score_scores_each_shape_as_its_competition_does(tmp_path):
    """kit score: P(1) by ROC AUC, tags by F2 per image, grades by kappa, values by RMSE, against scikit-learn."""
    from sklearn.metrics import cohen_kappa_score, fbeta_score, roc_auc_score
    from kit.leaderboard import score_submission
    rng = np.random.default_rng(3)
    n = 40
    ids = [f"i{k:03d}" for k in range(n)]
    usage = ["Public"] * n

    def run(truth, pred, metric):
        pd.DataFrame({"id": ids, "t": truth, "Usage": usage}).to_csv(tmp_path / "sol.csv", index=False)
        pd.DataFrame({"id": ids, "t": pred}).to_csv(tmp_path / "sub.csv", index=False)
        return score_submission(tmp_path / "sub.csv", tmp_path / "sol.csv", metric)["public"]
    y, p = rng.integers(0, 2, n), rng.random(n)
    assert run(y, p, "roc_auc") == pytest.approx(roc_auc_score(y, p))
    g, h = rng.integers(0, 5, n), rng.integers(0, 5, n)
    assert run(g, h, "qwk") == pytest.approx(cohen_kappa_score(g, h, weights="quadratic"))
    v, w = rng.normal(50, 10, n), rng.normal(50, 10, n)
    assert run(v.round(3), w.round(3), "rmse") == pytest.approx(np.sqrt(np.mean((v.round(3) - w.round(3)) ** 2)))
    tags = ["a b", "b", "c", "a c", "b c"]
    t, q = [tags[k % 5] for k in range(n)], [tags[(k * 3) % 5] for k in range(n)]
    vocab = ["a", "b", "c"]
    Y = np.array([[int(x in s.split()) for x in vocab] for s in t])
    P = np.array([[int(x in s.split()) for x in vocab] for s in q])
    assert run(t, q, "f2_samples") == pytest.approx(fbeta_score(Y, P, beta=2, average="samples", zero_division=0))


def test_labels_in_file_names_make_a_binary_of_two_names(tmp_path, env, monkeypatch):
    """dogs-vs-cats: train/cat.1.jpg ..., no labels CSV, a sample asking P(dog): kit init writes data.label_pattern
    and task.kind binary, whose 1 is the second name; the label format writes the names back."""
    import kit.init as kit_init
    from kit.init import init_recipe
    monkeypatch.setattr(kit_init, "measure_speed", lambda size, batch=None, device=None:
                        {"train": 200.0, "predict": 1000.0, "what": "a fixed speed for the tests"})
    rng = np.random.default_rng(0)
    root = tmp_path / "dvc"
    for i in range(20):
        _save(root / "train" / f"{('cat', 'dog')[i % 2]}.{i}.jpg", _image(rng, [i % 2]))
    for i in range(1, 5):
        _save(root / "test" / f"{i}.jpg", _image(rng, [i % 2]))
    pd.DataFrame({"id": range(1, 5), "label": 0.5}).to_csv(root / "sample_submission.csv", index=False)
    _, recipe = init_recipe(root, out=tmp_path / "dvc.yaml", budget=None)
    assert recipe.data.label_pattern and recipe.task.kind == "binary" and recipe.submit.format == "proba"
    s = load_sources(recipe.data, recipe.task)
    assert s.task.names == ("cat", "dog")
    assert [int(i.startswith("dog")) for i in s.train.ids] == list(s.train.labels) and s.train.labels.sum() == 10
    assert list(s.test.ids) == ["1", "2", "3", "4"]
    assert label_values(s.task, np.array([[0.2], [0.8]])) == [["cat", "dog"]]
    bad = recipe.data.model_copy(update={"label_pattern": r"^(\d+)\."})
    with pytest.raises(DataSourceError, match=r"finds no label in 20 of the 20 image files"):
        load_sources(bad, recipe.task)


def test_a_test_folder_without_a_sample_is_submitted_in_its_order(tmp_path, env):
    """No sample_submission.csv: the test folder's file names are the ids, in the folder's order, under the labels
    CSV's id and target columns; the values in the task's format (here a grade)."""
    root, col = _folder(tmp_path, "ordinal")
    (root / "sample_submission.csv").unlink()
    recipe = _recipe(tmp_path, root, col, "ordinal", **{"ensemble.seeds": [0], "train.epochs": 1})
    summary = R.run(recipe, log=quiet)
    sub = pd.read_csv(summary.submission, dtype=str)
    assert list(sub.columns) == ["image_id", "level"]
    assert list(sub["image_id"]) == sorted(p.stem for p in (root / "test").iterdir())
    assert set(sub["level"].astype(int)) <= {0, 1, 2, 3}


def test_a_study_minimises_rmse_the_metric_the_task_resolves(tmp_path, env):
    """train.metric: auto resolved from the data before the study exists: a regression's study minimises RMSE."""
    from kit.tune._storage import create_study
    root, col = _folder(tmp_path, "regression")
    recipe = _recipe(tmp_path, root, col, "regression", **{
        "search.params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})
    assert recipe.train.metric == "auto"
    study = create_study(recipe, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.direction.name == "MINIMIZE" and study.user_attrs["metric"] == "rmse"
