"""Strict recipe values: booleans are not numbers (nor numbers booleans), a repeated key is an error, a key a
setting makes meaningless (refit with k-fold) is an error, `kit plan` refuses what `kit run` refuses, and every
data path stays inside data.root. Each is one line, exit 2, naming the key and the fix."""
from __future__ import annotations

import os

import pytest
import yaml

from kit.cli import main
from test_inference import make_kaggle


def _fails(capsys, args, *words) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    one = " ".join(err.split())
    assert err.startswith("error: ") and "Traceback" not in err and all(w in one for w in words), one
    return one


def _write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, words", [
    ("train: {epochs: true}", ["recipe key 'train.epochs'", "true is a boolean, not a number"]),
    ("train: {lr: false}", ["recipe key 'train.lr'", "false is a boolean, not a number"]),
    ("ensemble: {seeds: [0, true]}", ["recipe key 'ensemble.seeds'", "true is a boolean"]),
    ("data: {source: digits, num_workers: true}", ["recipe key 'data.num_workers'", "true is a boolean"]),
    ("train: {ema: 1}", ["recipe key 'train.ema'", "1 is not a boolean; write true or false"]),
    ("train: {ema: 'yes'}", ["recipe key 'train.ema'", "'yes' is not a boolean"]),
])
def test_booleans_are_not_numbers(tmp_path, capsys, text, words):
    _fails(capsys, ["plan", _write(tmp_path, "data: {source: digits}\n" * ("data:" not in text) + text)], *words)


def test_a_boolean_given_with_set_is_refused_too(tmp_path, capsys):
    _fails(capsys, ["plan", _write(tmp_path, "data: {source: digits}\n"), "--set", "train.epochs=true"],
           "--set train.epochs=true", "true is a boolean, not a number")


@pytest.mark.parametrize("text, key", [
    ("data: {source: digits}\ntrain:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "'lr'"),
    ("data: {source: digits, source: digits}\n", "'source'"),
    ("data: {source: digits}\ndata: {source: digits}\n", "'data'"),
])
def test_a_repeated_key_is_an_error(tmp_path, capsys, text, key):
    _fails(capsys, ["plan", _write(tmp_path, text)], f"key {key} appears twice in one mapping", "keep one")


def test_a_repeated_key_in_set_is_an_error(tmp_path, capsys):
    _fails(capsys, ["plan", _write(tmp_path, "data: {source: digits}\n"), "--set", "train={lr: 1, lr: 2}"],
           "key 'lr' appears twice")


def test_yaml_merge_keys_may_override():
    from kit.recipe._checks import load_yaml
    assert load_yaml("a: &b {lr: 0.1, epochs: 3}\nc: {<<: *b, lr: 0.2}\n")["c"] == {"lr": 0.2, "epochs": 3}


def test_refit_with_kfold_is_an_error(tmp_path, capsys):
    _fails(capsys, ["plan", _write(tmp_path, "data: {source: digits, split: kfold, refit: true}\n")],
           "recipe key 'data.refit'", "remove data.refit, or set data.split: holdout")


def test_plan_refuses_the_folds_run_would_refuse(tmp_path, capsys):
    root = make_kaggle(tmp_path / "kaggle", n_train=18)  # 6 images a class
    recipe = _write(tmp_path, yaml.safe_dump({
        "data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg", "split": "kfold", "folds": 50},
        "model": {"backbone": "test_resnet", "weights": "none"}}))
    planned = _fails(capsys, ["plan", recipe], "fewer than data.folds=50", "use data.folds: 6 or fewer")
    assert not (tmp_path / "runs").exists()
    assert _fails(capsys, ["run", recipe]) == planned


@pytest.mark.parametrize("key, value", [
    ("image_dir", "../../elsewhere"), ("image_dir", "ABSOLUTE"), ("test_dir", ".."), ("sample_submission", "LINK"),
    ("image_dir", "LINKED_DIR")])
def test_data_paths_stay_inside_the_root(tmp_path, capsys, key, value):
    root = make_kaggle(tmp_path / "kaggle")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "sample.csv").write_text("id,label\n")
    if value == "ABSOLUTE":
        value = str(outside)
    elif value == "LINK":
        os.symlink(outside / "sample.csv", root / "link.csv")
        value = "link.csv"
    elif value == "LINKED_DIR":
        os.symlink(outside, root / "images")
        value = "images"
    recipe = _write(tmp_path, yaml.safe_dump({"data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg",
                                                       key: value}}))
    _fails(capsys, ["plan", recipe], f"recipe key 'data.{key}'", "leads outside data.root",
           "kit reads a dataset only inside its root")
