"""kit.recipe: defaults, strict keys with useful messages, up-front checks, overrides, the recipe hash, and a
contract test that every recipe in recipes/ loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from kit.recipe import (DataSpec, ModelSpec, Recipe, RecipeError, TrainSpec, load_recipe, parse_override,
                        recipe_from_dict, recipe_hash)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def write(tmp_path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_empty_file_gives_the_defaults(tmp_path):
    r = load_recipe(write(tmp_path, ""))
    assert r.name == "r"  # the file's stem when the recipe has no name:
    assert r.data == DataSpec() and r.model == ModelSpec() and r.train == TrainSpec()
    assert r.train.epochs == 10 and r.train.lr == 1e-3 and r.model.strategy == "finetune"
    assert r.run_dir == Path("runs") / "r"


def test_specs_are_frozen():
    with pytest.raises(Exception):
        TrainSpec().lr = 1.0


def test_unknown_key_names_file_key_valid_keys_and_a_guess(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "'train.lrr'" in msg and str(path) in msg
    assert "did you mean 'train.lr'" in msg
    assert "keys under 'train'" in msg and "batch_size" in msg and "epochs" in msg


def test_unknown_section_lists_the_top_level_keys(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'modle'.*did you mean 'model'.*keys under 'top level'"):
        load_recipe(write(tmp_path, "modle:\n  backbone: test_resnet\n"))


def test_unknown_key_of_a_search_param_names_its_keys(tmp_path):
    text = "search:\n  params:\n    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, lgo: true}\n"
    with pytest.raises(RecipeError, match=r"search\.params\.train\.lr\.lgo.*did you mean.*log"):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize("text, key", [
    ("train:\n  lr: fast\n", "train.lr"),
    ("train:\n  epochs: 0\n", "train.epochs"),
    ("train:\n  optimizer: lamb\n", "train.optimizer"),
    ("model:\n  strategy: freeze_all\n", "model.strategy"),
    ("tta:\n  modes: [none, spin]\n", "tta.modes"),
    ("ensemble:\n  methods: [mean, vote]\n", "ensemble.methods"),
    ("data: [1, 2]\n", "data"),
    ("ensemble:\n  seeds: [0, 1, 0]\n", "ensemble.seeds"),  # one member counted twice
    ("ensemble:\n  seeds: []\n", "ensemble.seeds"),
])
def test_wrong_types_and_values_name_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert f"'{key}'" in str(e.value) and str(path) in str(e.value)


def test_file_that_is_not_a_mapping_or_not_yaml(tmp_path):
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "train: {lr: [\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_missing_data_root_folder(tmp_path):
    with pytest.raises(RecipeError, match=r"data\.root.*does not exist"):
        load_recipe(write(tmp_path, f"data:\n  source: imagefolder\n  root: {tmp_path / 'nope'}\n"))
    with pytest.raises(RecipeError, match=r"data\.root.*needs data\.root"):
        load_recipe(write(tmp_path, "data:\n  source: kaggle\n"))


def test_kaggle_without_train_csv(tmp_path):
    (tmp_path / "comp").mkdir()
    with pytest.raises(RecipeError, match=r"data\.train_csv.*train\.csv does not exist"):
        load_recipe(write(tmp_path, f"data:\n  source: kaggle\n  root: {tmp_path / 'comp'}\n"))


def test_fixture_datasets_load(tmp_path, imagefolder_root, kaggle_root):
    r = recipe_from_dict({"data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg"}})
    assert r.data.root == str(kaggle_root)
    recipe_from_dict({"data": {"source": "imagefolder", "root": str(imagefolder_root)}})


def test_bad_weights_path(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.weights.*does not exist.*auto, hub, offline, none"):
        load_recipe(write(tmp_path, f"model:\n  weights: {tmp_path / 'w.pth'}\n"))
    (tmp_path / "w.pth").write_bytes(b"")
    assert load_recipe(write(tmp_path, f"model:\n  weights: {tmp_path / 'w.pth'}\n")).model.weights.endswith("w.pth")


def test_unknown_timm_backbone_suggests_close_names(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.backbone.*'resnet1' is not a timm model.*did you mean.*resnet"):
        load_recipe(write(tmp_path, "model:\n  backbone: resnet1\n"))


def test_ensemble_backbone_overrides_are_checked(tmp_path):
    with pytest.raises(RecipeError, match=r"'model\.backbone'.*\(ensemble\.backbones\[0\]\).*"
                                          r"'no_such_net' is not a timm model\. List"):
        load_recipe(write(tmp_path, "ensemble:\n  backbones:\n    - model: {backbone: no_such_net}\n"))
    with pytest.raises(RecipeError, match=r"unknown key 'train\.lrr'"):
        load_recipe(write(tmp_path, "ensemble:\n  backbones:\n    - train: {lrr: 0.1}\n"))


def test_bad_albumentations_transform(tmp_path):
    with pytest.raises(RecipeError, match=r"augment\.train\[0\]\.HorizontalFlp.*did you mean HorizontalFlip"):
        load_recipe(write(tmp_path, "augment:\n  train:\n    - HorizontalFlp: {p: 0.5}\n"))
    with pytest.raises(RecipeError, match=r"augment\.train\[1\]\.HorizontalFlip.*invalid parameters"):
        load_recipe(write(tmp_path, "augment:\n  train:\n    - RandomResizedCrop: {}\n"
                                    "    - HorizontalFlip: {p: 7}\n"))


def test_cut_at_needs_an_index(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.cut_at"):
        load_recipe(write(tmp_path, "model:\n  strategy: cut_at\n"))


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n")
    r = load_recipe(path, ["train.lr=3e-4", "train.epochs=2", "train.ema=true", "model.backbone=test_resnet",
                           "tta.modes=[none, hflip]", "model.layer_decay=null", "name=other"])
    assert r.train.lr == pytest.approx(3e-4) and isinstance(r.train.lr, float)
    assert r.train.epochs == 2 and r.train.ema is True and r.model.backbone == "test_resnet"
    assert r.tta.modes == ["none", "hflip"] and r.model.layer_decay is None and r.name == "other"
    assert parse_override("data.limit=100") == ("data.limit", 100)
    assert parse_override(" train.device = cpu") == ("train.device", "cpu")


def test_unknown_and_malformed_overrides(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(RecipeError, match=r"unknown key 'train\.lrr'.*did you mean 'train\.lr'"):
        load_recipe(path, ["train.lrr=0.1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(RecipeError, match="not a section"):
        load_recipe(path, ["name.x=1"])
    with pytest.raises(RecipeError, match=r"'train\.epochs'"):
        load_recipe(path, ["train.epochs=many"])


def test_recipe_hash_is_stable_and_tracks_results_only(tmp_path):
    a = load_recipe(write(tmp_path, "train:\n  lr: 0.01\n"))
    b = load_recipe(write(tmp_path, "train: {lr: 1.0e-2}\n"))
    assert recipe_hash(a) == recipe_hash(b) == recipe_hash(Recipe.model_validate(a.to_dict()))
    assert len(recipe_hash(a)) == 16
    for override in ("train.lr=0.02", "train.seed=1", "model.backbone=test_resnet", "data.seed=3"):
        assert recipe_hash(load_recipe(a_path(tmp_path), [override])) != recipe_hash(a), override
    for override in ("output_dir=elsewhere", "data.num_workers=0", "search.trials=3"):
        assert recipe_hash(load_recipe(a_path(tmp_path), [override])) == recipe_hash(a), override


def a_path(tmp_path) -> Path:
    return write(tmp_path, "train:\n  lr: 0.01\n")


def test_resolved_recipe_round_trips(tmp_path):
    import yaml
    r = load_recipe(write(tmp_path, "model:\n  backbone: test_resnet\ntrain:\n  epochs: 2\n"))
    again = load_recipe(write(tmp_path, yaml.safe_dump(r.to_dict()), "resolved.yaml"))
    assert again == r and recipe_hash(again) == recipe_hash(r)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_in_recipes_loads(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # data roots are relative to the repository
    r = load_recipe(path)
    assert r.name
    assert recipe_hash(r) == recipe_hash(load_recipe(path))


def test_recipes_folder_is_not_empty():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


def test_importing_the_recipe_and_run_modules_stays_light():
    import subprocess
    import sys
    code = "import sys, kit.recipe, kit.rundir, kit.run; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # torch and timm load when a model is built, not on import
