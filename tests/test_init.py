"""kit.init: `kit init DATA_DIR` reads a dataset folder and writes a recipe that loads and plans as it is.

Every layout is checked the same way: the written file names efficientnet_lite0 / offline, and then loads with
load_recipe (a tiny random-init model swapped in by overrides, so no weights are needed), its data load and
scan, and it plans."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import KAGGLE_CLASSES, _save, class_image
from kit.cli import main
from kit.errors import DataError, RecipeError, RunDirError
import kit.init as kit_init
from kit.init import epochs_for_budget, init_recipe, input_size, split, strategy, work
from kit.context import load_checked_sources
from kit.plan import format_plan, make_plan
from kit.recipe import load_recipe

TINY = ["model.backbone=test_resnet", "model.weights=none", "data.num_workers=0"]


SPEED = {"train": 200.0, "predict": 1000.0, "what": "a fixed speed for the tests"}


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    if "real_speed" not in request.keywords:  # the timing of the backbone, measured in its own test
        monkeypatch.setattr(kit_init, "measure_speed", lambda size, batch=None, device=None: SPEED)


def _init(root, tmp_path, **options):
    """init_recipe into tmp_path/recipe.yaml, then the written file loaded, scanned and planned."""
    out = tmp_path / "recipe.yaml"
    text, recipe = init_recipe(root, out=out, **options)
    assert out.read_text() == text
    raw = yaml.safe_load(text)
    assert raw["model"]["backbone"] == "efficientnet_lite0" and raw["model"]["weights"] == "offline"
    if raw["data"].get("split") == "holdout":  # one seed validates, three refitted on every image submit
        assert raw["ensemble"]["seeds"] == [0] and raw["data"]["refit"] == [0, 1, 2]
    else:
        assert raw["ensemble"]["seeds"] == [0, 1, 2] and "refit" not in raw["data"]
    full_frame = (raw.get("augment") or {}).get("crop_pct") == 1.0  # small images: ten_crop's crops = the image
    assert raw["tta"]["modes"] == (["none", "hflip"] if full_frame else ["none", "hflip", "ten_crop"])
    loaded = load_recipe(out, overrides=TINY)
    sources, bad = load_checked_sources(loaded)
    assert bad == []
    plan = make_plan(loaded, sources)
    assert format_plan(plan)[0].startswith(f"plan of {raw['name']}")
    assert bool(plan.advice) == (raw["model"]["strategy"] == "auto")  # the advisor measured at plan time
    return raw, loaded, sources


def _kaggle(root, ids, labels, *, test_ids=("t_000", "t_001", "t_002"), suffix=".jpg", train_dir="train",
            test_dir="test", sample=None, encoding=None, extra=None):
    """A Kaggle folder: train.csv (id, label and `extra` columns), images <train_dir>/<id><suffix>, test images,
    sample_submission.csv (label format unless `sample` gives its columns)."""
    rng = np.random.default_rng(0)
    for i, image_id in enumerate(ids):
        _save(root / train_dir / f"{image_id}{suffix}", class_image(KAGGLE_CLASSES.index(labels[i]) % 3, rng))
    for i, image_id in enumerate(test_ids):
        _save(root / test_dir / f"{image_id}{suffix}", class_image(i % 3, rng))
    pd.DataFrame({"id": ids, "label": labels, **(extra or {})}).to_csv(root / "train.csv", index=False,
                                                                        encoding=encoding)
    pd.DataFrame({"id": list(test_ids), **(sample or {"label": KAGGLE_CLASSES[0]})}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


LABELS = [KAGGLE_CLASSES[i % 3] for i in range(24)]


# ---------------------------------------------------------------- layouts


def test_imagefolder_train_class_tree(imagefolder_root, tmp_path):
    raw, recipe, sources = _init(imagefolder_root, tmp_path)
    assert raw["name"] == "imagefolder"
    assert raw["data"] == {"source": "imagefolder", "root": str(imagefolder_root), "split": "kfold"}
    assert raw["augment"]["input_size"] == 64  # 40 x 30 px images: short side 30 -> 64
    assert sources.train.classes == ("class_a", "class_b", "class_c") and len(sources.test) == 6
    assert raw["model"]["strategy"] == "auto"  # 30 images: the advisor measures


def test_imagefolder_classes_at_root_with_upper_case_extensions_and_a_test_images_folder(tmp_path):
    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("round", "square")):
        for i in range(6):
            _save(root / name / f"IMG_{i}.PNG", class_image(k, rng))
    for i in range(3):
        _save(root / "test_images" / f"T{i}.JPEG", class_image(i % 2, rng))
    raw, recipe, sources = _init(root, tmp_path)
    assert raw["data"]["test_dir"] == "test_images"  # not taken for a third class
    assert sources.train.classes == ("round", "square") and len(sources.train) == 12
    assert sorted(sources.test.ids) == ["T0", "T1", "T2"]
    assert "folds" not in raw["data"] and recipe.data.folds == 5  # 6 images a class: the default 5 folds fit


def test_photo_sized_images_leave_the_input_size_to_the_backbone(tmp_path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(("day", "night")):
        for i in range(4):
            _save(tmp_path / "photos" / "train" / name / f"{i}.jpg", class_image(k, rng, width=300, height=240))
    raw, recipe, sources = _init(tmp_path / "photos", tmp_path)
    assert "augment" not in raw and recipe.augment.input_size is None  # no empty (null) augment: section
    assert "median short side 240 px" in (tmp_path / "recipe.yaml").read_text()


def test_kaggle_layout_states_only_what_differs(kaggle_root, tmp_path):
    raw, recipe, sources = _init(kaggle_root, tmp_path)
    # id, label, train/ and test/ are kit's defaults: not written
    assert raw["data"] == {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "split": "kfold"}
    assert "submit" not in raw  # a label column: the default format
    assert len(sources.train) == 30 and len(sources.test) == 6


def test_path_column_with_subfolders(tmp_path):
    """train.csv names files by relative path (class subfolders); its ids name no file."""
    root = tmp_path / "paths"
    rng = np.random.default_rng(0)
    ids = [f"a{i}" for i in range(24)]
    paths = [f"train_images/{LABELS[i]}/{image_id}.png" for i, image_id in enumerate(ids)]
    for i, p in enumerate(paths):
        _save(root / p, class_image(i % 3, rng))
    for i in range(3):
        _save(root / "test" / f"t{i}.png", class_image(i, rng))
    pd.DataFrame({"image_id": ids, "filepath": paths, "species": LABELS}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"image_id": ["t0", "t1", "t2"], "species": "cat"}).to_csv(root / "sample_submission.csv",
                                                                            index=False)
    raw, recipe, sources = _init(root, tmp_path)
    d = raw["data"]
    assert (d["id_column"], d["label_column"], d["path_column"], d["image_dir"]) == \
        ("image_id", "species", "filepath", ".")
    assert d["image_suffix"] == ".png"  # for the test ids of the sample submission
    assert sources.train.ids[0] == "a0" and sources.train.items[0].endswith("train_images/cat/a0.png")


def test_csv_saved_with_a_utf8_bom(tmp_path):
    root = _kaggle(tmp_path / "bom", [f"x{i}" for i in range(24)], LABELS, encoding="utf-8-sig")
    assert (root / "train.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    raw, recipe, sources = _init(root, tmp_path)
    assert "id_column" not in raw["data"]  # 'id', not '\ufeffid'
    assert recipe.data.id_column == "id" and len(sources.train) == 24


def test_string_ids_with_leading_zeros_stay_strings(tmp_path):
    ids = [f"{i:03d}" for i in range(24)]
    root = _kaggle(tmp_path / "zeros", ids, LABELS, test_ids=("007", "010", "099"))
    raw, recipe, sources = _init(root, tmp_path)
    assert sources.train.ids[7] == "007" and list(sources.test.ids) == ["007", "010", "099"]


def test_upper_case_extension_is_spelled_as_on_disk(tmp_path):
    root = _kaggle(tmp_path / "upper", [f"x{i}" for i in range(24)], LABELS, suffix=".JPG")
    raw, recipe, sources = _init(root, tmp_path)
    assert raw["data"]["image_suffix"] == ".JPG"


def test_probability_sample_submission_and_other_folder_names(tmp_path):
    root = _kaggle(tmp_path / "proba", [f"x{i}" for i in range(24)], LABELS, train_dir="train_images",
                   test_dir="test_images", sample={c: "0.333" for c in KAGGLE_CLASSES},
                   extra={"width": ["40", "41"] * 12})  # a second few-valued column: the sample's columns decide
    raw, recipe, sources = _init(root, tmp_path)
    assert raw["submit"] == {"format": "proba"}
    assert (raw["data"]["image_dir"], raw["data"]["test_dir"]) == ("train_images", "test_images")
    assert recipe.data.label_column == "label"


# ---------------------------------------------------------------- choices


def test_split_kfold_for_small_data_holdout_for_large():
    keys, why = split(np.arange(300) % 3, ("a", "b", "c"))
    assert keys == {"split": "kfold"} and "300 labelled images" in why
    keys, why = split(np.arange(3000) % 3, ("a", "b", "c"))
    assert keys == {"split": "holdout", "refit": [0, 1, 2]} and "600" in why  # 20% of 3,000 validate
    assert "seeds [0, 1, 2] each train on all 3,000 images" in why  # refitted on every image for the submission
    assert "saves 30% of the training" in why  # 2,400 + 3 x 3,000 against 3 x (2,400 + 3,000) images an epoch
    keys, _ = split(np.array([0, 0, 0, 1, 1, 1, 1, 1]), ("a", "b"))
    assert keys == {"split": "kfold", "folds": 3}  # the smallest class has 3 images


@pytest.mark.parametrize("side, expected", [(28, 64), (40, 64), (100, 128), (200, None), (500, None)])
def test_input_size_from_the_median_short_side(side, expected):
    st = {"read": 3, "sizes": np.array([[side + 20, side]] * 3)}
    size, why = input_size(st, 224)
    assert size == expected and f"{side} px" in why


def test_strategy_auto_for_small_data_full_for_large():
    assert strategy(500, 5)[0] == "auto" and strategy(50_000, 10)[0] == "full"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("outcome", [
    {"model.strategy": "feature_extract"}, {"model.strategy": "finetune", "model.frozen_stages": 2},
    {"model.strategy": "full"}])
def test_what_kit_init_writes_plans_whatever_the_advisor_decides(kaggle_root, tmp_path, monkeypatch, outcome):
    """A holdout with data.refit and strategy auto (what kit init writes between 2,000 and 10,000 images) used to
    stop at plan time when the advisor chose feature_extract ("refit applies to fine-tune"). Every outcome of
    kit.advise.decide plans now; a head on cached embeddings is not refitted and predicts the test images itself."""
    import kit.advise
    from kit.advise import Advice
    monkeypatch.setattr(kit_init, "SMALL_DATA", 10)  # the fixture's 30 images take the large-data branch
    monkeypatch.setattr(kit.advise, "cached_advice",
                        lambda recipe, sources=None: Advice(outcome["model.strategy"], outcome, {}, ["fixed"]))
    raw, loaded, sources = _init(kaggle_root, tmp_path)
    assert raw["data"]["split"] == "holdout" and raw["model"]["strategy"] == "auto"
    plan = make_plan(loaded, sources)
    refits = [m for m in plan.members if m.refit_of is not None]
    if outcome["model.strategy"] == "feature_extract":
        assert refits == [] and any("no refit" in line for line in format_plan(plan))
    else:
        assert len(refits) == 3 and {m.recipe.model.strategy for m in refits} == {outcome["model.strategy"]}


def test_refuses_to_overwrite_without_force(kaggle_root, tmp_path):
    out = tmp_path / "recipe.yaml"
    out.write_text("keep me\n")
    with pytest.raises(RunDirError, match="recipe.yaml already exists.*--force"):
        init_recipe(kaggle_root, out=out)
    assert out.read_text() == "keep me\n"
    init_recipe(kaggle_root, out=out, force=True)
    assert "efficientnet_lite0" in out.read_text()


def test_data_that_cannot_be_split_writes_nothing(tmp_path):
    root = _kaggle(tmp_path / "lonely", [f"x{i}" for i in range(24)], ["cat"] + ["dog", "fox"] * 11 + ["dog"])
    with pytest.raises(DataError, match="class 'cat' has 1 labelled image"):
        init_recipe(root, out=tmp_path / "recipe.yaml")
    assert not (tmp_path / "recipe.yaml").exists()


def test_one_class_is_refused(tmp_path):
    for i in range(4):
        _save(tmp_path / "one" / "train" / "only" / f"{i}.png", class_image(0, np.random.default_rng(i)))
    with pytest.raises(DataError, match="one class"):
        init_recipe(tmp_path / "one")


def test_no_csv_and_no_class_folders(tmp_path):
    _save(tmp_path / "loose" / "a.png", class_image(0, np.random.default_rng(0)))
    with pytest.raises(DataError, match="neither a train.csv .* nor class folders"):
        init_recipe(tmp_path / "loose")


def test_two_candidate_label_columns_name_the_option(tmp_path):
    root = _kaggle(tmp_path / "two", [f"x{i}" for i in range(24)], LABELS, sample={"target": "cat"},
                   extra={"fold": [str(i % 4) for i in range(24)]})
    with pytest.raises(DataError, match=r"2 columns could be the label.*'label': 3.*'fold': 4.*--label-column"):
        init_recipe(root)
    _, recipe = init_recipe(root, label_column="label")
    assert recipe.data.label_column == "label"


def test_ids_that_match_no_file(tmp_path):
    root = _kaggle(tmp_path / "nofile", [f"x{i}" for i in range(24)], LABELS)
    pd.DataFrame({"id": [f"y{i}" for i in range(24)], "label": LABELS}).to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"ids in column 'id' of .*train.csv match no image file.*'y0'.*--path-column"):
        init_recipe(root)


def test_mixed_extensions_are_named(tmp_path):
    root = _kaggle(tmp_path / "mixed", [f"x{i}" for i in range(24)], LABELS)
    for p in sorted((root / "train").glob("x1*.jpg")):
        p.rename(p.with_suffix(".png"))
    with pytest.raises(DataError, match=r"different extensions \(\.jpg for 13, \.png for 11"):
        init_recipe(root)


def test_one_hot_labels_are_label_columns(tmp_path):
    """One 0/1 column per class, exactly one 1 a row (plant-pathology-2020): data.label_columns, one class an image
    (no task: section, as a class column's recipe), the sample's probability columns."""
    root = _kaggle(tmp_path / "onehot", [f"x{i}" for i in range(24)], LABELS,
                   sample={c: "0.3" for c in ("healthy", "rust")})
    pd.DataFrame({"id": [f"x{i}" for i in range(24)], "healthy": ["1", "0"] * 12,
                  "rust": ["0", "1"] * 12}).to_csv(root / "train.csv", index=False)
    raw, recipe, sources = _init(root, tmp_path, budget=None)
    assert raw["data"]["label_columns"] == ["healthy", "rust"] and "label_column" not in raw["data"]
    assert "task" not in raw and raw["submit"] == {"format": "proba"}
    assert sources.task.kind == "multiclass" and sources.task.columns and list(sources.train.labels[:2]) == [0, 1]


def test_path_option_outside_a_csv_layout(imagefolder_root):
    with pytest.raises(DataError, match="--path-column name columns of a labels CSV"):
        init_recipe(imagefolder_root, path_column="file")


# ---------------------------------------------------------------- CLI


def test_cli_writes_the_recipe_and_prints_its_plan(kaggle_root, tmp_path, capsys):
    assert main(["init", str(kaggle_root), "-o", "leaves.yaml"]) == 0
    out = capsys.readouterr().out
    assert "wrote leaves.yaml" in out and "plan of kaggle" in out and "efficientnet_lite0-s2" in out
    assert load_recipe(tmp_path / "leaves.yaml").model.weights == "offline"
    assert main(["init", str(kaggle_root), "-o", "leaves.yaml"]) == 2
    assert "leaves.yaml already exists" in " ".join(capsys.readouterr().err.split())


# ---- epochs for a time budget

def test_epochs_fit_the_budget():
    labels = np.arange(10_000) % 10
    w = work(labels, {"split": "holdout", "refit": [0, 1, 2]})  # one validated seed, three refits
    assert w["train"] == 8_000 + 3 * 10_000 and w["validate"] == 2_000 and w["refit"] and w["test_members"] == 4
    assert work(labels, {"split": "holdout", "refit": True})["train"] == 3 * (8_000 + 10_000)  # 3 seeds, each refit
    speed = {"train": 100.0, "predict": 1000.0, "what": "test"}
    epoch_s = 38_000 / (100 * kit_init.LOADER_EFFICIENCY) + 2_000 / 1000
    predict_s = w["views"] * (2_000 + 4 * 2_000) / 1000  # validation + the test images by the member and its refits
    epochs, why = epochs_for_budget(60, speed, w, n_test=2_000)
    assert epochs == int((3600 - 60 * kit_init.FIXED_MINUTES - predict_s) // epoch_s) and 1 < epochs < 10
    assert f"{epochs} epochs fit the 60-minute budget" in why and "1 seed x 8,000 training images + 3 refits x 10,000" in why
    assert "The default 10 epochs would take about" in why
    epochs, why = epochs_for_budget(1, speed, w, n_test=2_000)
    assert epochs == 1 and "over the 1-minute budget" in why
    epochs, why = epochs_for_budget(10_000, speed, w, n_test=2_000)
    assert epochs == 10 and why.startswith("the default 10 epochs fit")


def test_kfold_work_counts_every_fold():
    w = work(np.arange(1_000) % 5, {"split": "kfold"})
    assert w["train"] == 3 * 5 * 800 and w["validate"] == 3 * 1_000 and not w["refit"] and w["test_members"] == 15


def test_budget_writes_train_epochs_and_zero_leaves_the_default(kaggle_root, tmp_path, capsys):
    raw, _, _ = _init(kaggle_root, tmp_path, budget=0.05)
    assert raw["train"]["epochs"] == 1  # a 3-second budget: even one epoch is over it, and says so
    assert "over the 0.05-minute budget" in (tmp_path / "recipe.yaml").read_text()
    assert main(["init", str(kaggle_root), "-o", "other.yaml", "--budget", "0"]) == 0
    assert "train" not in yaml.safe_load((tmp_path / "other.yaml").read_text())


def test_help_states_the_default_budget(capsys):
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    assert f"(default {kit_init.BUDGET_MINUTES:g};" in " ".join(capsys.readouterr().out.split())


@pytest.mark.real_speed
def test_speed_is_measured_once_and_cached(monkeypatch):
    first = kit_init.measure_speed(32, batch=4)
    assert first["train"] > 0 and first["predict"] > 0 and "32 px, batch 4" in first["what"]
    import timm
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("measured again"))
    assert kit_init.measure_speed(32, batch=4) == first
