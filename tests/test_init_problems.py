"""`kit init` lists every problem of a dataset folder in one message, and leaves out (data.bad_images: skip, with a
comment naming them) the image files it could not read, so that the recipe it writes runs as it is."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from kit.cli import main
from kit.context import load_checked_sources
from kit.init import init_recipe
from kit.plan import make_plan
from kit.recipe import load_recipe
from test_inference import make_kaggle

TINY = ["model.backbone=test_resnet", "model.weights=none", "model.strategy=full", "data.num_workers=0"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_every_problem_of_a_kaggle_folder_in_one_message(tmp_path, capsys):
    root = make_kaggle(tmp_path / "kaggle")
    df = pd.read_csv(root / "train.csv")
    extra = pd.DataFrame({"id": ["img_000", "ghost", "../../../etc/passwd"], "label": ["cat", "dog", "fox"]})
    pd.concat([df, extra]).to_csv(root / "train.csv", index=False)
    assert main(["init", str(root), "-o", str(tmp_path / "r.yaml"), "--budget", "0"]) == 2
    err = capsys.readouterr().err
    one = " ".join(err.split())
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "3 problems with the dataset in" in one
    assert "(1)" in one and "'img_000' appears more than once" in one
    assert "(2)" in one and "leads outside" in one and "(3)" in one and "ghost.jpg does not exist" in one
    assert not (tmp_path / "r.yaml").exists()


def test_every_problem_of_an_imagefolder_in_one_message(imagefolder_root, capsys, tmp_path):
    (imagefolder_root / "train" / "empty_one").mkdir()
    (imagefolder_root / "train" / "empty_two").mkdir()
    (imagefolder_root / "train" / "class_a" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "outside.png").write_bytes((imagefolder_root / "test" / "test_00.png").read_bytes())
    assert main(["init", str(imagefolder_root), "-o", str(tmp_path / "r.yaml"), "--budget", "0"]) == 2
    one = " ".join(capsys.readouterr().err.split())
    assert "2 problems" in one and "empty_one" in one and "empty_two" in one and "through symlinks" in one


def test_unreadable_images_are_left_out_with_a_comment(tmp_path):
    root = make_kaggle(tmp_path / "kaggle")
    (root / "train" / "img_004.jpg").write_bytes(b"not an image")
    jpeg = (root / "train" / "img_005.jpg").read_bytes()
    (root / "train" / "img_005.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    out = tmp_path / "r.yaml"
    text, _ = init_recipe(root, out=out, budget=None)
    raw = yaml.safe_load(text)
    assert raw["data"]["bad_images"] == "skip"
    comment = " ".join(line.strip("# ") for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "2 images could not be read and are left out" in comment and "img_004.jpg" in comment
    assert "img_005.jpg" in comment
    recipe = load_recipe(out, TINY)  # the recipe as written runs: the scan's bad files are skipped
    sources, bad = load_checked_sources(recipe)
    assert len(bad) == 2 and len(sources.train) == 28
    assert make_plan(recipe, sources).data["n_train"] == 28
