"""kit init on every task kind: the target read from train.csv and the sample submission (kit.task.detect_kind, or
--task where two readings fit), its metric, submission format and group column written with their reasons, and
the recipe loads as written (its data read with the task it states). Small Kaggle folders of real 32 x 32 PNG (and
TIFF) files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

import kit.init as kit_init
from conftest import _save, class_image
from kit.cli import main
from kit.context import load_checked_sources
from kit.data.layout import detect_group_column
from kit.errors import DataError, RecipeError
from kit.init import init_recipe
from kit.recipe import load_recipe

TINY = ["model.backbone=test_resnet", "model.weights=none", "data.num_workers=0"]
N = 30


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kit_init, "measure_speed", lambda size, batch=None, device=None:
                        {"train": 200.0, "predict": 1000.0, "what": "a fixed speed for the tests"})


def _folder(root, columns: dict, sample: dict, *, id_column="image_id", ext=".png", test_ext=None, n_test=4,
            train_csv="train.csv", fmt="PNG"):
    """train.csv (`columns`, ids first), images train/<id><ext> and test/<tid><test_ext>, sample_submission.csv
    (the test ids and `sample`'s columns)."""
    rng = np.random.default_rng(0)
    ids = [f"im{i:03d}" for i in range(N)]
    for i, image_id in enumerate(ids):
        _save(root / "train" / f"{image_id}{ext}", class_image(i % 3, rng, 32, 32), format=fmt)
    test_ids = [f"t{i:03d}" for i in range(n_test)]
    for i, image_id in enumerate(test_ids):
        _save(root / "test" / f"{image_id}{test_ext or ext}", class_image(i % 3, rng, 32, 32), format=fmt)
    pd.DataFrame({id_column: ids, **columns}).to_csv(root / train_csv, index=False)
    pd.DataFrame({id_column: test_ids, **sample}).to_csv(root / "sample_submission.csv", index=False)
    return root


def _init(root, tmp_path, **options):
    """init_recipe into tmp_path/recipe.yaml: (the written YAML, the sources the loaded recipe reads)."""
    out = tmp_path / "recipe.yaml"
    text, _ = init_recipe(root, out=out, budget=None, **options)
    raw = yaml.safe_load(text)
    recipe = load_recipe(out, overrides=TINY)  # as kit run reads it
    sources, bad = load_checked_sources(recipe)
    assert bad == []
    return raw, text, sources


def _flat(text: str) -> str:
    """The recipe's text with comment marks and line breaks taken out (wrapped comments read as one)."""
    return " ".join(line.strip().lstrip("#").strip() for line in text.splitlines())


def _comment_above(text: str, key: str) -> str:
    """The comment lines right above `key:` in the recipe text, joined."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    above = []
    while i > 0 and lines[i - 1].lstrip().startswith("#"):
        i -= 1
        above.insert(0, lines[i].strip("# "))
    return " ".join(above)


TAGS = ["sandal sneaker", "bag", "coat bag", "sneaker", "", "bag sandal"] * 5


def test_tags_are_multilabel_scored_by_f2_and_submitted_as_tags(tmp_path):
    root = _folder(tmp_path / "tags", {"tags": TAGS}, {"tags": "bag"})
    raw, text, sources = _init(root, tmp_path)
    assert raw["task"] == {"kind": "multilabel"} and raw["train"]["metric"] == "f2_samples"
    assert raw["submit"] == {"format": "label"} and raw["model"]["strategy"] == "full"
    assert "separated tags" in _comment_above(text, "kind") and "planet" in _comment_above(text, "metric")
    assert "class probes" in _comment_above(text, "strategy")
    assert sources.task.kind == "multilabel" and sources.task.outputs == ("bag", "coat", "sandal", "sneaker")
    assert "labels: 4" in _flat(text) and "images with none" in _flat(text)  # the target described, not classes


def test_zero_one_with_probability_sample_and_patients(tmp_path):
    """SIIM-ISIC's layout: image_name, patient_id, sex, age, target; the sample holds 0.5."""
    columns = {"patient_id": [f"IP_{i // 3}" for i in range(N)], "sex": ["male", "female"] * (N // 2),
               "age_approx": [str(30 + 5 * (i % 4)) for i in range(N)], "target": ["0", "0", "1"] * (N // 3)}
    root = _folder(tmp_path / "melanoma", columns, {"target": "0.5"}, id_column="image_name")
    raw, text, sources = _init(root, tmp_path)
    assert raw["task"] == {"kind": "binary"} and raw["train"]["metric"] == "roc_auc"
    assert raw["submit"] == {"format": "proba"} and "'0.5'" in _comment_above(text, "format")
    assert raw["data"]["group_column"] == "patient_id" and raw["data"]["label_column"] == "target"
    assert "patient" in _comment_above(text, "group_column") and "whole groups" in _flat(text)
    assert sources.train.groups is not None and "10 of 30 images are 1" in _flat(text)


@pytest.mark.parametrize("column", ["level", "diagnosis"])
def test_integer_grades_named_as_grades_are_ordinal(tmp_path, column):
    root = _folder(tmp_path / column, {column: [str(i % 5) for i in range(N)]}, {column: "0"})
    raw, text, sources = _init(root, tmp_path)
    assert raw["task"] == {"kind": "ordinal"} and raw["train"]["metric"] == "qwk"
    assert raw["submit"] == {"format": "label"} and "reads as a grade" in _comment_above(text, "kind")
    assert sources.task.kind == "ordinal" and (sources.task.low, sources.task.high) == (0, 4)
    assert f"grades in {column!r}: 0 to 4" in _flat(text)


def test_real_values_are_regression(tmp_path):
    root = _folder(tmp_path / "pawpularity", {"score": [f"{3.5 * i + 0.25:.2f}" for i in range(N)]}, {"score": "0"})
    raw, text, sources = _init(root, tmp_path)
    assert raw["task"] == {"kind": "regression"} and raw["train"]["metric"] == "rmse"
    assert raw["submit"] == {"format": "label"} and "real values" in _comment_above(text, "kind")
    assert sources.task.kind == "regression" and "values in 'score': 0.25 to 101.75" in _flat(text)


def test_zero_one_columns_with_several_ones_are_multilabel_scored_by_auc(tmp_path):
    labels = {"cat": ["1", "0", "1"] * 10, "dog": ["0", "1", "1"] * 10, "fox": ["1", "1", "0"] * 10}
    root = _folder(tmp_path / "chest", labels, {c: "0.5" for c in labels})
    raw, text, sources = _init(root, tmp_path)
    assert raw["data"]["label_columns"] == ["cat", "dog", "fox"] and raw["task"] == {"kind": "multilabel"}
    assert raw["train"]["metric"] == "roc_auc" and raw["submit"] == {"format": "proba"}
    assert "probability column per label" in _comment_above(text, "metric")
    assert sources.task.columns and sources.train.labels.shape == (N, 3)


def test_one_hot_columns_with_a_label_sample_are_multiclass(tmp_path):
    labels = {"healthy": ["1", "0", "0"] * 10, "rust": ["0", "1", "0"] * 10, "scab": ["0", "0", "1"] * 10}
    root = _folder(tmp_path / "plants", labels, {c: "0" for c in labels})
    raw, text, sources = _init(root, tmp_path)
    assert raw["data"]["label_columns"] == ["healthy", "rust", "scab"] and "task" not in raw
    assert raw["submit"] == {"format": "label"} and "a 0/1 per class column" in _comment_above(text, "format")
    assert sources.task.kind == "multiclass" and sources.train.classes == ("healthy", "rust", "scab")


def test_ambiguous_integers_stop_with_the_option_and_task_settles_it(tmp_path):
    root = _folder(tmp_path / "x", {"x": [str(i % 5) for i in range(N)]}, {"x": "0"})
    with pytest.raises(DataError, match=r"column 'x' holds the integers 0-4: classes or ordered grades; pass --task "
                                        r"multiclass or --task ordinal"):
        init_recipe(root, out=tmp_path / "recipe.yaml", budget=None)
    assert not (tmp_path / "recipe.yaml").exists()
    raw, text, _ = _init(root, tmp_path, task="ordinal")
    assert raw["task"] == {"kind": "ordinal"} and "--task ordinal" in _comment_above(text, "kind")
    (tmp_path / "recipe.yaml").unlink()
    raw, text, sources = _init(root, tmp_path, task="multiclass", metric="f1_macro")
    assert raw["task"] == {"kind": "multiclass"} and raw["train"]["metric"] == "f1_macro"  # stated: it was asked
    assert sources.train.classes == ("0", "1", "2", "3", "4")


def test_cli_options(tmp_path, capsys):
    root = _folder(tmp_path / "x", {"x": [str(i % 5) for i in range(N)]}, {"x": "0"})
    assert main(["init", str(root), "-o", "r.yaml", "--budget", "0"]) == 2
    assert "--task multiclass or --task ordinal" in " ".join(capsys.readouterr().err.split())
    assert main(["init", str(root), "-o", "r.yaml", "--budget", "0", "--task", "ordinal", "--metric", "mae"]) == 0
    raw = yaml.safe_load((tmp_path / "r.yaml").read_text())
    assert raw["task"]["kind"] == "ordinal" and raw["train"]["metric"] == "mae"


def test_parser_lists_every_task_kind_and_metric(capsys):
    from kit.cli import _parser
    from kit.recipe import TASK_KINDS
    from kit.task import METRICS_OF
    assert _parser.TASK_KINDS == TASK_KINDS
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind, metrics in METRICS_OF.items():
        assert f"{kind}: {', '.join(metrics)}" in text


# ---------------------------------------------------------------- one clear error each


def _error(root, **options) -> str:
    with pytest.raises((DataError, RecipeError)) as e:
        init_recipe(root, budget=None, **options)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_bad_targets_through_init(tmp_path, imagefolder_root):
    two = _folder(tmp_path / "two", {"target": ["0", "1", "2"] * 10}, {"target": "0.5"})
    assert "column 'target' holds '2', and a binary target is 0 or 1" in _error(two, task="binary")
    halves = _folder(tmp_path / "halves", {"level": ["0", "1", "2.5"] * 10}, {"level": "0"})
    assert "holds '2.5', and ordinal grades are integers" in _error(halves, task="ordinal")
    names = _folder(tmp_path / "names", {"label": ["cat", "dog"] * 15}, {"label": "cat"})
    assert "holds 'cat', not a number" in _error(names, task="regression")
    assert "--metric qwk does not score a multiclass target; use one of accuracy" in _error(names, metric="qwk")
    zeros = _folder(tmp_path / "zeros", {"target": ["0"] * N}, {"target": "0.5"})
    assert "holds one value, 0, for all the labelled images" in _error(zeros, task="binary")
    assert "is an ImageFolder tree" in _error(imagefolder_root, task="regression")
    assert "--group-column name columns of a labels CSV" in _error(imagefolder_root, group_column="patient")
    assert "has no column 'patient' (--group-column)" in _error(names, group_column="patient")


# ---------------------------------------------------------------- groups


def test_group_columns_are_found_by_name_and_repeats_not_metadata():
    n = 12
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": ["a", "b"] * 6,
                       "sex": ["m", "f"] * 6, "site": ["x", "y", "z"] * 4, "age": ["40", "50", "60"] * 4})
    assert detect_group_column(df, {"image_id", "label"}) == (None, "")  # metadata is not a group
    flags = df.assign(**{"Subject Focus": ["0", "1"] * 6})  # PetFinder's metadata: a 0/1 flag named "subject"
    assert detect_group_column(flags, {"image_id", "label"}) == (None, "")
    big = pd.DataFrame({"image_id": [f"i{k}" for k in range(400)], "patient": [f"p{k % 4}" for k in range(400)]})
    assert detect_group_column(big, {"image_id"})[0] is None  # 4 values for 400 rows: a category, not patients
    with_subject = df.assign(SubjectID=[f"s{k // 4}" for k in range(n)])
    col, why = detect_group_column(with_subject, {"image_id", "label"})
    assert col == "SubjectID" and "reads as a subject column" in why and "3 values for 12 rows" in why
    batch = df.assign(batch_id=[f"b{k // 2}" for k in range(n)])  # ends in id, 2 rows a value
    assert detect_group_column(batch, {"image_id", "label"})[0] == "batch_id"
    unique = df.assign(scan_id=[f"u{k}" for k in range(n)], patient=[f"p{k}" for k in range(n)])
    assert detect_group_column(unique, {"image_id", "label"})[0] is None  # one row each: no grouping
    nested = df.assign(study_id=[f"s{k // 2}" for k in range(n)], patient_id=[f"p{k // 4}" for k in range(n)])
    col, why = detect_group_column(nested, {"image_id", "label"})
    assert col == "patient_id" and "also group-like: 'study_id'" in why  # the coarser grouping
    holes = df.assign(patient_id=["p1", "p2", "p3", ""] * 3)
    col, note = detect_group_column(holes, {"image_id", "label"})
    assert col is None and "3 of its rows are empty" in note and "--group-column patient_id" in note


def test_group_column_option_overrides_detection(tmp_path):
    columns = {"patient_id": [f"P{i // 3}" for i in range(N)], "hospital": [f"H{i // 10}" for i in range(N)],
               "level": [str(i % 3) for i in range(N)]}
    root = _folder(tmp_path / "eyes", columns, {"level": "0"})
    raw, text, sources = _init(root, tmp_path, group_column="hospital")
    assert raw["data"]["group_column"] == "hospital" and "--group-column hospital" in _flat(text)
    assert raw["data"]["folds"] == 3  # three hospitals, each in one fold
    assert len(set(sources.train.groups)) == 3


# ---------------------------------------------------------------- layouts


def test_labels_csv_under_another_name(tmp_path):
    root = _folder(tmp_path / "other", {"label": ["cat", "dog", "fox"] * 10}, {"label": "cat"},
                   train_csv="train_labels.csv")
    raw, _, sources = _init(root, tmp_path)
    assert raw["data"]["train_csv"] == "train_labels.csv" and len(sources.train) == N


def test_ids_with_their_extension_and_test_ids_without(tmp_path):
    """train.csv's ids are file names (im000.png), the sample's test ids are bare (t000): the labelled images are
    read by name from the id column (data.path_column), the test ones take data.image_suffix."""
    root = _folder(tmp_path / "ext", {"label": ["cat", "dog", "fox"] * 10}, {"label": "cat"})
    df = pd.read_csv(root / "train.csv", dtype=str)
    df["image_id"] = df["image_id"] + ".png"
    df.to_csv(root / "train.csv", index=False)
    raw, text, sources = _init(root, tmp_path)
    assert (raw["data"]["path_column"], raw["data"]["image_suffix"]) == ("image_id", ".png")
    assert "with their extension" in _comment_above(text, "path_column")
    assert sources.train.ids[0] == "im000.png" and list(sources.test.ids[:2]) == ["t000", "t001"]


def test_path_column_with_a_different_test_extension(tmp_path):
    root = _folder(tmp_path / "paths", {"label": ["cat", "dog", "fox"] * 10}, {"label": "cat"}, test_ext=".jpg",
                   fmt=None)
    df = pd.read_csv(root / "train.csv", dtype=str)
    df["file"] = "train/" + df["image_id"] + ".png"
    df.to_csv(root / "train.csv", index=False)
    raw, _, sources = _init(root, tmp_path)
    assert (raw["data"]["path_column"], raw["data"]["image_dir"], raw["data"]["image_suffix"]) == ("file", ".", ".jpg")
    assert sources.test.items[0].endswith("t000.jpg")


def test_tiff_images(tmp_path):
    root = _folder(tmp_path / "tiff", {"label": ["cat", "dog", "fox"] * 10}, {"label": "cat"}, ext=".tif",
                   fmt="TIFF")
    raw, text, sources = _init(root, tmp_path)
    assert raw["data"]["image_suffix"] == ".tif" and "32 x 32 px" in _flat(text)
    image = sources.train.image(0)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
