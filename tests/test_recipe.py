"""kit.recipe: defaults, strict keys with useful messages, up-front checks, overrides, the recipe hash, and a
contract test that every recipe in recipes/ loads."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kit.recipe import (DataSpec, ModelSpec, Recipe, RecipeError, TrainSpec, load_recipe, parse_override,
                        recipe_from_dict, recipe_hash)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def write(tmp_path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_minimal_recipe_gives_the_defaults(tmp_path):
    r = load_recipe(write(tmp_path, "data: {source: digits}\n"))
    assert r.name == "r"  # the file's stem when the recipe has no name:
    assert r.data == DataSpec() and r.model == ModelSpec() and r.train == TrainSpec()
    assert r.train.epochs == 10 and r.train.lr is None and r.model.strategy == "finetune"
    assert r.train.lr_for("finetune") == 1e-3 and r.train.lr_for("full") == 3e-3
    assert r.run_dir == Path("runs") / "r"


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "{}\n", "---\n"])
def test_an_empty_recipe_is_refused_with_a_minimal_example(tmp_path, text):
    # it used to train every default silently (a truncated or wrong file ran the digits quickstart)
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=r"is empty.*data: \{source: imagefolder, root: .*data: \{source: digits\}"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(path, ["train.epochs=2"])
    with pytest.raises(RecipeError, match=r"unknown key 'train\.lrr'"):  # what the user wrote is reported first
        load_recipe(path, ["train.lrr=2"])


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
    (tmp_path / "w.pth").write_bytes(b"")  # not a file of tensors: refused before the plan (kit.readers)
    with pytest.raises(RecipeError, match=r"model\.weights.*w\.pth is corrupt or not a torch file of tensors"):
        load_recipe(write(tmp_path, f"model:\n  weights: {tmp_path / 'w.pth'}\n"))
    import torch
    torch.save({"weight": torch.zeros(1)}, tmp_path / "w.pth")
    assert load_recipe(write(tmp_path, f"model:\n  weights: {tmp_path / 'w.pth'}\n")).model.weights.endswith("w.pth")


def test_unknown_timm_backbone_suggests_close_names(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.backbone.*'resnet1' is not a timm model.*did you mean.*resnet"):
        load_recipe(write(tmp_path, "model:\n  backbone: resnet1\n"))


def test_ensemble_backbone_overrides_are_checked(tmp_path):
    with pytest.raises(RecipeError, match=r"'model\.backbone'.*\(ensemble\.backbones\[0\]\).*"
                                          r"'no_such_net' is not a timm model\. List"):
        load_recipe(write(tmp_path, "ensemble:\n  backbones:\n    - model: {backbone: no_such_net}\n"))
    with pytest.raises(RecipeError, match=r"unknown key 'ensemble\.backbones\[0\]\.train\.lrr'.*did you mean "
                                          r"'ensemble\.backbones\[0\]\.train\.lr'"):
        load_recipe(write(tmp_path, "ensemble:\n  backbones:\n    - train: {lrr: 0.1}\n"))


def checked(path):
    """load_recipe, then what the plan checks before any data is read (stages, transforms at the model's size)."""
    from kit.plan import check_recipe_models
    recipe = load_recipe(path)
    check_recipe_models(recipe)
    return recipe


def test_bad_albumentations_transform(tmp_path):
    with pytest.raises(RecipeError, match=r"augment\.train\[0\]\.HorizontalFlp.*did you mean HorizontalFlip"):
        load_recipe(write(tmp_path, "augment:\n  train:\n    - HorizontalFlp: {p: 0.5}\n"))
    with pytest.raises(RecipeError, match=r"augment\.train\[1\]\.HorizontalFlip.*invalid parameters"):
        checked(write(tmp_path, "augment:\n  train:\n    - RandomResizedCrop: {}\n"
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
    path = write(tmp_path, "data: {source: digits}\n")
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


# Recipes that used to pass validation and fail (or do the wrong thing) once work had started, or escape as a
# traceback: each is a RecipeError from load_recipe now, naming the file and the key.

def test_a_misspelt_transform_parameter_fails_as_strictly_as_training(tmp_path):
    path = write(tmp_path, "augment:\n  train:\n    - Affine: {rotat: 10}\n")
    with pytest.raises(RecipeError, match=r"'augment\.train\[0\]\.Affine' in the recipe of r: unknown parameter 'rotat' "
                                          r"\(did you mean 'rotate'\?\); parameters of Affine: .*rotate"):
        checked(path)
    with pytest.raises(RecipeError, match=r"augment\.train\[0\]\.Affine.*rotate: Input should be"):
        checked(write(tmp_path, "augment:\n  train:\n    - Affine: {rotate: sideways}\n"))
    with pytest.raises(RecipeError, match=r"augment\.train\[0\]\.ImageOnlyTransform.*not an albumentations transform"):
        load_recipe(write(tmp_path, "augment:\n  train:\n    - ImageOnlyTransform: {}\n"))  # a base class


def test_a_transform_without_parameters(tmp_path):
    r = load_recipe(write(tmp_path, "augment:\n  train:\n    - HorizontalFlip:\n    - Affine: {rotate: 5}\n"))
    assert r.augment.train == [{"HorizontalFlip": {}}, {"Affine": {"rotate": 5}}]


def test_transforms_are_validated_by_the_function_training_uses(tmp_path, monkeypatch):
    import kit.data.transforms as transforms
    sizes = []

    def build(i, item, size):
        sizes.append(size)
        raise ValueError("rejected by build_transform")
    monkeypatch.setattr(transforms, "build_transform", build)
    with pytest.raises(RecipeError, match=r"augment\.train\[0\]\.RandomResizedCrop.*rejected by build_transform"):
        checked(write(tmp_path, "augment:\n  input_size: 48\n  train:\n    - RandomResizedCrop: {}\n"))
    assert sizes == [48]  # RandomResizedCrop's size is filled in there, from the input size


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_devices(tmp_path, device):
    assert load_recipe(write(tmp_path, f"train: {{device: '{device}'}}\n")).train.device == device


@pytest.mark.parametrize("device", ["banana", "cuda:", "cuda:x", "gpu", "CPU", "cuda:0 "])
def test_unknown_device(tmp_path, device):
    with pytest.raises(RecipeError, match=r"'train\.device' in .*r\.yaml: .* is not a device; valid: auto, cpu, cuda, "
                                          r"cuda:N .*mps"):
        load_recipe(write(tmp_path, f"train: {{device: '{device}'}}\n"))


@pytest.mark.parametrize("text, key, arithmetic", [
    ("augment: {input_size: 100000}", "augment.input_size", r"3 \* 100000\^2 \* 4 B = 120\.0 GB"),
    ("tta: {resize: 100000}", "tta.resize", r"3 \* 100000\^2 \* 4 B = 120\.0 GB"),
    ("data: {digits_size: 100000}", "data.digits_size", r"1797 \* 3 \* 100000\^2 B = 53,910\.0 GB"),
])
def test_image_sizes_are_bounded_with_the_arithmetic(tmp_path, text, key, arithmetic):
    with pytest.raises(RecipeError, match=rf"'{re.escape(key)}' in .*r\.yaml: 100000 px is over .*{arithmetic}.*at most"):
        load_recipe(write(tmp_path, text + "\n"))
    # the largest sizes allowed still load
    bound = "512" if "digits" in key else "4096"
    assert load_recipe(write(tmp_path, text.replace("100000", bound) + "\n"))


def test_cut_at_is_checked_against_the_backbones_stages(tmp_path):
    text = "model: {backbone: test_resnet, strategy: cut_at, cut_at: %d}\n"
    with pytest.raises(RecipeError, match=r"'model\.cut_at' in the recipe of r: 99 is out of range for test_resnet, whose "
                                          r"stages \(timm feature_info\) are 0: act1, 1: layer1, .* 4: layer4; use 0\.\.4"):
        checked(write(tmp_path, text % 99))
    assert checked(write(tmp_path, text % 4)).model.cut_at == 4
    with pytest.raises(RecipeError, match=r"'model\.cut_at' in .*\(ensemble\.backbones\[0\]\): 5 is out of range"):
        checked(write(tmp_path, "ensemble:\n  backbones:\n    - model: {backbone: resnet10t, strategy: cut_at, "
                                    "cut_at: 5}\n"))


def test_frozen_stages_are_checked_against_the_backbones_stages(tmp_path):
    from kit.models.backbone import build_model
    from kit.models.strategies import stage_groups
    from kit.recipe import ModelSpec
    n = len(stage_groups(build_model(ModelSpec(backbone="test_resnet"), 2, load_weights=False)[0]))
    text = "model: {backbone: test_resnet, frozen_stages: %d}\n"
    assert checked(write(tmp_path, text % n)).model.frozen_stages == n  # the same count training uses
    with pytest.raises(RecipeError, match=rf"'model\.frozen_stages' in .*: {n + 1}, but test_resnet has {n} stages.*"
                                          rf"use 0\.\.{n}"):
        checked(write(tmp_path, text % (n + 1)))


def test_override_values_that_are_not_yaml(tmp_path):
    path = write(tmp_path, "data: {source: digits}\n")
    with pytest.raises(RecipeError, match=r"--set train\.lr=\[0\.1 on .*r\.yaml: the value of 'train\.lr', '\[0\.1', "
                                          r"is not valid YAML"):
        load_recipe(path, ["train.lr=[0.1"])


@pytest.mark.parametrize("override, pattern", [
    ("trian.lr=0.1", r"unknown key 'trian' in --set trian\.lr=0\.1 on .*r\.yaml \(did you mean 'train'\?\); "
                     r"keys under 'top level'"),
    ("train.lr.x=1", r"--set train\.lr\.x=1 on .*r\.yaml: 'train\.lr' is a value, not a section"),
    ("augment.train.0.p=1", r"'augment\.train' is a value, not a section; set it whole"),
    ("train..lr=1", r"'train\.\.lr' is not a key path"),
    ("=1", r"'' is not a key path"),
    ("train={lrr: 1}", r"unknown key 'train\.lrr' in --set train=\{lrr: 1\} on .*r\.yaml \(did you mean 'train\.lr'"),
    ("train.epochs=many", r"'train\.epochs' in --set train\.epochs=many on .*r\.yaml: Input should be a valid integer"),
    ("train=5", r"'train' in --set train=5 on .*r\.yaml: Input should be a valid dictionary"),
    ("tta.modes=[none, spin]", r"'tta\.modes' in --set .*unknown TTA modes \['spin'\]"),
    ("train.lr=.nan", r"'train\.lr' in --set train\.lr=\.nan on .*r\.yaml: nan is not a number"),
    ("data.root={1: 2}", r"'data\.root' in --set .*key 1 is not a string"),
])
def test_overrides_name_the_set_the_file_and_the_key(tmp_path, override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_recipe(write(tmp_path, "data: {source: digits}\n"), [override])


def test_search_params_cannot_be_set_key_by_key(tmp_path):
    path = write(tmp_path, "data: {source: digits}\n")
    with pytest.raises(RecipeError, match=r"--set search\.params\.train\.lr\.low=0\.001 on .*r\.yaml: search\.params "
                                          r"keys hold dots \(train\.lr\).*write it in the recipe file: "
                                          r"search: \{params: \{train\.lr: \{low: 0\.001, \.\.\.\}\}\}"):
        load_recipe(path, ["search.params.train.lr.low=0.001"])
    r = load_recipe(path, ["search.params={train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}"])  # the way that works
    assert r.search.params["train.lr"].high == pytest.approx(1e-2)


@pytest.mark.parametrize("text, pattern", [
    ("data: 5", r"'data' in .*: Input should be a valid dictionary"),
    ("augment: {train: [5]}", r"'augment\.train\[0\]' in .*: Input should be a valid dictionary \(got 5\)"),
    ("augment: {train: [{A: 1, B: 2}]}", r"'augment\.train\[0\]\.A' in "),
    ("augment: {train: [{HorizontalFlip: {}, VerticalFlip: {}}]}", r"'augment\.train' in .*item 0 must be one"),
    ("ensemble: {backbones: [{model: 5}]}", r"'ensemble\.backbones\[0\]\.model' in .*valid dictionary"),
    ("ensemble: {backbones: [{data: {limit: 5}}]}", r"'ensemble\.backbones\[0\]' in .*sections \['data'\] cannot vary"),
    ("ensemble: {backbones: [{model: {a.b: 1}}]}", r"unknown key 'ensemble\.backbones\[0\]\.model\.a\.b'"),
    ("ensemble: {backbones: 5}", r"'ensemble\.backbones' in .*valid list"),
    ("- a\n- b", r"must hold a mapping of sections.*not a YAML list"),
    ("42", r"must hold a mapping of sections.*not a YAML int"),
    ("just text", r"must hold a mapping of sections.*not a YAML str"),
    ("1: 2", r"r\.yaml: key 1 is not a string.*quote it"),
    ("train: {true: 2}", r"'train' in .*key True is not a string"),
    ("~: 2", r"key None is not a string"),
    ("train: {lr: .nan}", r"'train\.lr' in .*: nan is not a number a run can use"),
    ("train: {lr: .inf}", r"'train\.lr' in .*: inf is not a number"),
    ("tta: {scales: [-.inf]}", r"'tta\.scales\[0\]' in .*: -inf is not a number"),
    ("augment: {train: [{Affine: {rotate: .nan}}]}", r"'augment\.train\[0\]\.Affine\.rotate' in .*nan"),
    ("train: {seed: 100000000000000000000000}", r"'train\.seed' in .*does not fit in 64 bits"),
    ("train: {seed: 4294967296}", r"'train\.seed' in .*less than or equal to 4294967295"),
    ("data: {seed: -1}", r"'data\.seed' in .*greater than or equal to 0"),
    ("ensemble: {seeds: [0, -3]}", r"'ensemble\.seeds\[1\]' in .*greater than or equal to 0"),
    ("train: {epochs: 1000000000}", r"'train\.epochs' in .*less than or equal to 100000"),
    ("data: {num_workers: 100000}", r"'data\.num_workers' in "),
    ("tta: {scales: [1000]}", r"'tta\.scales\[0\]' in .*less than or equal to 4"),
    ("search: {params: {train.lr: {type: float, low: 0.1, high: 1, step: 0}}}", r"'search\.params\.train\.lr\.step'"),
    ("data: {source: imagefolder, root: \"a\\0b\"}", r"'data\.root' in .*NUL byte"),
    ("data: {source: imagefolder, root: %s}" % ("a" * 300), r"'data\.root' in .*does not exist"),
    ("model: {weights: %s.pth}" % ("w" * 300), r"'model\.weights' in .*does not exist"),
    ("name: 2020-01-01", r"'name' in .*datetime\.date.*quote it"),
    ("a: &a [*a]", r"'a\[0\]\[0\].*nested more than 32 levels"),
    ("train: {lr: [" * 40 + "]}" * 40, r"nested more than 32 levels|nested too deeply"),
    ("x: &x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
        f"x{i}: &x{i} [{', '.join(['*x' + (str(i - 1) if i > 1 else '')] * 10)}]\n" for i in range(1, 6)),
     r"holds more than 10,000 values"),
])
def test_malformed_shapes_name_the_key(tmp_path, text, pattern):
    path = write(tmp_path, text + "\n")
    with pytest.raises(RecipeError, match=pattern) as e:
        load_recipe(path)
    assert str(path) in str(e.value)


def test_files_that_cannot_be_read_as_text(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(RecipeError, match=r"r\.yaml is not UTF-8 text"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / ("x" * 300 + ".yaml"))  # a name too long for the file system
    with pytest.raises(RecipeError, match=r"does not exist \(it is a folder\)"):
        load_recipe(tmp_path)
    path.write_text("a: [" + "[" * 3000 + "]" * 3000 + "]\n")
    with pytest.raises(RecipeError, match="nested"):
        load_recipe(path)


def test_ensemble_choose_must_be_among_the_methods(tmp_path):
    """It used to be accepted, and the run then ended in a KeyError with no submission."""
    with pytest.raises(RecipeError, match=r"'ensemble\.choose' in .*'stack' is not among ensemble\.methods "
                                          r"\['mean', 'rank'\].*add it to ensemble\.methods"):
        load_recipe(write(tmp_path, "ensemble: {methods: [mean, rank], choose: stack}\n"))
    assert load_recipe(write(tmp_path, "ensemble: {methods: [mean, rank], choose: rank}\n")).ensemble.choose == "rank"


@pytest.mark.parametrize("key", ["seed", "metric", "device"])
def test_a_backbone_entry_cannot_vary_what_the_run_reads_once(tmp_path, key):
    """ensemble.backbones[i].train.seed used to be overwritten silently; .metric and .device were accepted and
    the top-level ones read."""
    value = {"seed": 7, "metric": "log_loss", "device": "cpu"}[key]
    with pytest.raises(RecipeError, match=rf"'ensemble\.backbones\[0\]\.train\.{key}' in .*remove it from the "
                                          r"backbone entry"):
        load_recipe(write(tmp_path, f"ensemble:\n  backbones:\n    - train: {{{key}: {value}}}\n"))
