"""kit.inference and `kit predict --images/--csv`: a finished run predicts new images exactly as it chose (each
configuration at its TTA mode, the chosen blend and weights), so its own test images give back its saved test
probabilities and its submission; budget options, inputs, bad images and paths escaping --image-dir."""
from __future__ import annotations

import contextlib

import json
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kit
from conftest import class_image
from kit import ensemble as E
from kit import run as R
from kit.cli import main
from kit.data.images import read_image
from kit.errors import DataError, ImageReadError, RecipeError, RunDirError
from kit.inference import load
from kit.pool import config_predictions
from kit.plan import load_plan
from kit.predictions import load_predictions
from kit.recipe import recipe_from_dict

CLASSES = ("cat", "dog", "fox")
# the tiny run may well choose a rank blend, which warns on its 6 test images; the warning is tested once, below
pytestmark = pytest.mark.filterwarnings("ignore:this run blends by rank")
TOL = dict(rtol=1e-5, atol=1e-6)  # other batch compositions than the run's change float32 sums in the last bits


def make_kaggle(root, n_train: int = 30, n_test: int = 6):
    """A Kaggle-style folder as conftest's kaggle_root (which is per test; this one is per module)."""
    rng = np.random.default_rng(1)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    ids = [f"img_{i:03d}" for i in range(n_train)]
    for i, image_id in enumerate(ids):
        Image.fromarray(class_image(i % 3, rng)).save(root / "train" / f"{image_id}.jpg", quality=95)
    pd.DataFrame({"id": ids, "label": [CLASSES[i % 3] for i in range(n_train)]}).to_csv(root / "train.csv", index=False)
    test_ids = [f"t_{i:03d}" for i in range(n_test)]
    for i, image_id in enumerate(test_ids):
        Image.fromarray(class_image(i % 3, rng)).save(root / "test" / f"{image_id}.jpg", quality=95)
    pd.DataFrame({"id": test_ids, "label": CLASSES[0]}).to_csv(root / "sample_submission.csv", index=False)
    return root


def tiny_recipe(base, root, **sections):
    """tests/test_plan.py's tiny kaggle recipe: test_resnet at 32 px, 1 epoch, TTA none + hflip, seeds 0 and 1."""
    raw = {"name": "tiny", "output_dir": str(base / "runs"), "leaderboard": str(base / "lb.sqlite"),
           "data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg", "num_workers": 0},
           "augment": {"input_size": 32, "crop_pct": 1.0},
           "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
           "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
           "tta": {"modes": ["none", "hflip"]}, "ensemble": {"seeds": [0, 1]}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe_from_dict(raw)


def quiet(msg):
    pass


@contextlib.contextmanager
def finished_run(tmp_path_factory, name: str):
    """The tiny Kaggle folder trained by kit run in a folder of its own (the current directory and kit's cache
    while the caller's module uses it): yields (base folder, recipe, data root, run Summary)."""
    base = tmp_path_factory.mktemp(name)
    root = make_kaggle(base / "kaggle")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("KIT_CACHE_DIR", str(base / "cache"))
        recipe = tiny_recipe(base, root)
        yield base, recipe, root, R.run(recipe, log=quiet)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with finished_run(tmp_path_factory, "inference") as (base, recipe, root, summary):
        run_dir = recipe.run_dir
        report = json.loads((run_dir / "ensemble" / "report.json").read_text())
        yield SimpleNamespace(base=base, root=root, test=root / "test", sample=root / "sample_submission.csv",
                              run_dir=run_dir, summary=summary, report=report,
                              expected=load_predictions(run_dir / "ensemble" / f"test_{report['chosen']}.npz"))


def _copy_run(t, tmp_path):
    (tmp_path / "runs").mkdir(exist_ok=True)
    return shutil.copytree(t.run_dir, tmp_path / "runs" / t.run_dir.name)


def _config_tests(run_dir, mode=None) -> dict:
    """Each configuration's test predictions (its fold models averaged) at `mode`, or at the run's chosen one."""
    report = json.loads((run_dir / "ensemble" / "report.json").read_text())
    plan = load_plan(run_dir / "plan.json")
    return {name: config_predictions(run_dir, ms, mode or report["tta"][name])[1]
            for name, ms in plan.configs().items()}


def test_a_run_predicts_its_own_test_images_as_its_submission(trained, tmp_path, capsys):
    t = trained
    assert len(t.summary.configs) == 2 and t.report["chosen"] is not None  # a blend, not one configuration
    ens = kit.load(t.run_dir)
    assert ens.members == t.report["members"] and ens.classes == CLASSES
    assert [c.tta for c in ens.configs] == [t.report["tta"][n] for n in ens.members]
    probs = ens.predict(t.test)  # a folder: ids from the file names, as the run names its test images
    assert list(probs.columns) == list(CLASSES) and probs.index.name == "id"
    np.testing.assert_allclose(probs.loc[t.expected.ids].to_numpy(), t.expected.probs, **TOL)

    out = tmp_path / "predictions.csv"
    assert main(["predict", str(t.run_dir), "--images", str(t.test), "--sample", str(t.sample),
                 "--output", str(out)]) == 0
    assert out.read_text() == (t.run_dir / "submission.csv").read_text()
    printed = " ".join(capsys.readouterr().out.split())
    assert "s per 1,000 images" in printed and "images/s" in printed

    submission = pd.read_csv(t.run_dir / "submission.csv", dtype=str)
    paths = [str(t.test / f"{i}.jpg") for i in submission["id"]]
    labels = ens.predict_labels(paths, ids=submission["id"])
    assert labels.tolist() == submission["label"].tolist()


def test_every_blend_method_of_the_run_is_reproduced(trained, tmp_path):
    """ensemble/report.json's chosen method set to each method in turn: the prediction is that method's saved
    test blend (stack included, whose weights are only for display)."""
    run_dir = _copy_run(trained, tmp_path)
    report_file = run_dir / "ensemble" / "report.json"
    for method in trained.report["methods"]:
        report_file.write_text(json.dumps({**trained.report, "chosen": method}))
        ens = load(run_dir)
        expected = load_predictions(run_dir / "ensemble" / f"test_{method}.npz")
        probs = ens.predict(trained.test)
        np.testing.assert_allclose(probs.loc[expected.ids].to_numpy(), expected.probs, **TOL, err_msg=method)
        weights = trained.report["methods"][method]["weights"]
        if method == "rank":  # ranks among the images predicted together: a warning for too few of them
            with pytest.warns(UserWarning, match="blends by rank"):
                ens.predict(trained.test)
        if method == "stack":  # a model over all configurations' probabilities together: none can be dropped
            with pytest.raises(RecipeError, match="'stack'.*cannot drop"):
                ens.select(1)
        else:  # a configuration without weight is not predicted at all
            assert ens.members == [n for n, w in zip(trained.report["members"], weights) if w >= 1e-6]
            assert ens.left_out == tuple(n for n, w in zip(trained.report["members"], weights) if w < 1e-6)


def test_members_1_keeps_the_heaviest_configuration_alone(trained, tmp_path):
    t = trained
    ens = load(t.run_dir)
    heaviest = max(ens.configs, key=lambda c: (c.weight, c.score))  # max() keeps the first of ties, as select does
    one = ens.select(1)
    assert one.members == [heaviest.name] and one.blend.method is None
    expected = _config_tests(t.run_dir)[heaviest.name]
    np.testing.assert_allclose(one.predict(t.test).loc[expected.ids].to_numpy(), expected.probs, **TOL)
    assert ens.select(2).members == ens.members and ens.select(5) is ens

    out = tmp_path / "one.csv"
    assert main(["predict", str(t.run_dir), "--images", str(t.test), "--members", "1", "--output", str(out)]) == 0
    written = pd.read_csv(out, dtype=str).set_index("id")["label"]
    assert written.loc[expected.ids].tolist() == [CLASSES[k] for k in expected.probs.argmax(axis=1)]
    with pytest.raises(RecipeError, match="at least 1"):
        ens.select(0)


def test_tta_override_predicts_every_configuration_at_that_mode(trained, tmp_path):
    t = trained
    ens = load(t.run_dir)
    mode = "hflip" if ens.configs[0].tta == "none" else "none"  # the other mode the run predicted
    tests = _config_tests(t.run_dir, mode)
    ids = tests[ens.members[0]].ids
    chosen = t.report["methods"][t.report["chosen"]]
    result = E.MethodResult(t.report["chosen"], np.array(chosen["weights"]), 0.0, 0.0, chosen.get("params"))
    expected = E.apply_method([tests[n].reorder(ids).probs for n in t.report["members"]], result)
    overridden = ens.with_tta(mode)
    assert {c.tta for c in overridden.configs} == {mode} and all(c.score is None for c in overridden.configs)
    np.testing.assert_allclose(overridden.predict(t.test).loc[ids].to_numpy(), expected, **TOL)
    out = tmp_path / "tta.csv"
    assert main(["predict", str(t.run_dir), "--images", str(t.test), "--tta", mode, "--output", str(out)]) == 0
    labels = pd.read_csv(out, dtype=str).set_index("id")["label"]
    assert labels.loc[ids].tolist() == [CLASSES[k] for k in expected.argmax(axis=1)]
    assert main(["predict", str(t.run_dir), "--images", str(t.test), "--tta", "spin", "--output", str(out),
                 "--force"]) == 2


def test_paths_pil_images_and_arrays_predict_alike(trained):
    ens = load(trained.run_dir)
    paths = sorted(str(p) for p in trained.test.glob("*.jpg"))
    by_path = ens.predict(paths)
    assert isinstance(by_path.index, pd.RangeIndex) and len(by_path) == len(paths)  # no ids: positions
    np.testing.assert_allclose(by_path.sum(axis=1), 1.0, rtol=1e-5)
    pil = ens.predict([Image.open(p) for p in paths])
    arrays = ens.predict([read_image(p) for p in paths], ids=[f"x{i}" for i in range(len(paths))])
    np.testing.assert_array_equal(pil.to_numpy(), by_path.to_numpy())
    np.testing.assert_array_equal(arrays.to_numpy(), by_path.to_numpy())
    assert list(arrays.index) == [f"x{i}" for i in range(len(paths))]
    single = ens.select(1)  # no blend: an image's prediction does not depend on the others predicted with it
    one = single.predict(read_image(paths[0]))  # a single image
    np.testing.assert_array_equal(one.to_numpy(), single.predict(paths).iloc[:1].to_numpy())
    with pytest.raises(DataError, match=r"image 1 is an array of shape \(32, 32\) and dtype float64"):
        ens.predict([read_image(paths[0]), np.zeros((32, 32))])
    with pytest.raises(DataError, match="2 ids for 1 images"):
        ens.predict(paths[:1], ids=["a", "b"])


def test_bad_images_are_all_named_in_one_error(trained, tmp_path, capsys):
    folder = shutil.copytree(trained.test, tmp_path / "new")
    good = (folder / "t_000.jpg").read_bytes()
    (folder / "t_001.jpg").write_bytes(good[:200])  # truncated
    (folder / "extra.png").write_text("not an image")
    with pytest.raises(ImageReadError) as e:
        load(trained.run_dir).predict(folder)
    message = str(e.value)
    assert "2 of 7 images cannot be decoded" in message and "t_001.jpg" in message and "extra.png" in message
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained.run_dir), "--images", str(folder), "--output", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "t_001.jpg" in err and "extra.png" in err and "Traceback" not in err
    assert not out.exists()


def test_csv_paths_must_stay_inside_the_image_dir(trained, tmp_path, capsys):
    t = trained
    ids = [f"t_{i:03d}" for i in range(6)]
    good = tmp_path / "good.csv"
    pd.DataFrame({"image": ids, "file": [f"{i}.jpg" for i in ids]}).to_csv(good, index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(t.run_dir), "--csv", str(good), "--image-dir", str(t.test), "--id-column", "image",
                 "--path-column", "file", "--output", str(out)]) == 0
    by_folder = tmp_path / "folder.csv"
    assert main(["predict", str(t.run_dir), "--images", str(t.test), "--output", str(by_folder)]) == 0
    assert out.read_text().splitlines()[1:] == by_folder.read_text().splitlines()[1:]
    # ids + the run's image suffix (.jpg), the sample submission as the CSV
    assert main(["predict", str(t.run_dir), "--csv", str(t.sample), "--image-dir", str(t.test), "--output",
                 str(out), "--force"]) == 0

    bad = tmp_path / "bad.csv"
    files = ["t_000.jpg", "t_001.jpg", "../train/img_000.jpg", str(t.root / "train" / "img_001.jpg")]
    pd.DataFrame({"id": ["a", "b", "c", "d"], "path": files}).to_csv(bad, index=False)
    assert main(["predict", str(t.run_dir), "--csv", str(bad), "--image-dir", str(t.test), "--path-column", "path",
                 "--output", str(tmp_path / "bad_out.csv")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "2 image paths lead outside --image-dir" in err and "row 2 (line 4)" in err and "row 3 (line 5)" in err
    assert not (tmp_path / "bad_out.csv").exists()
    from kit.inference import csv_images
    with pytest.raises(DataError, match="row 2"):
        csv_images(bad, t.test, path_column="path")
    assert main(["predict", str(t.run_dir), "--csv", str(bad), "--output", str(out), "--force"]) == 2  # no dir


def test_an_existing_output_is_kept_without_force(trained, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    out.write_text("mine\n")
    args = ["predict", str(trained.run_dir), "--images", str(trained.test), "--output", str(out)]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(args + ["--force"]) == 0 and out.read_text().startswith("id,label\n")


def test_default_output_lands_in_the_current_directory(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(trained.run_dir), "--images", str(trained.test)]) == 0
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 6


def test_kit_predict_run_tta_still_predicts_the_runs_own_splits(trained, tmp_path, capsys):
    run_dir = _copy_run(trained, tmp_path)
    assert main(["predict", str(run_dir), "--tta", "vflip"]) == 0
    assert (run_dir / "members" / "test_resnet-s0-f0" / "preds" / "test_vflip.npz").is_file()
    assert "vflip" in capsys.readouterr().out
    assert main(["predict", str(run_dir), "--members", "1"]) == 2  # a budget option needs new images
    assert "--images" in capsys.readouterr().err


def test_an_unfinished_run_is_refused_naming_the_command(trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    (run_dir / "members" / "test_resnet-s1-f0" / "done.json").unlink()
    hint = f"kit train {run_dir} --member 1 --resume"
    with pytest.raises(RunDirError, match=rf"1 of 2 members .* not finished.*{re.escape(hint)}"):
        load(run_dir)
    with pytest.raises(RunDirError, match="neither a run directory"):
        load(tmp_path)


class _Planted:
    """Unpickled, creates the marker file: proof that it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_planted_as_a_checkpoint_is_refused_without_running_it(trained, tmp_path):
    import pickle
    from kit.errors import UnsafeFileError
    run_dir = _copy_run(trained, tmp_path)
    best = run_dir / "members" / load(run_dir).configs[0].members[0].name / "best.pt"  # a member the blend uses
    best.write_bytes(pickle.dumps({"model": _Planted(tmp_path / "ran")}))
    with pytest.raises(UnsafeFileError, match=re.escape(str(best))):
        load(run_dir).predict(trained.test)
    assert not (tmp_path / "ran").exists()


def test_summary_describes_the_blend(trained):
    ens = load(trained.run_dir)
    df = ens.summary()
    assert list(df.index) == ens.members and list(df.columns) == ["backbone", "models", "tta", "weight",
                                                                   "val_accuracy"]
    assert df.attrs["method"] == trained.report["chosen"]
    scores = {c.config: c.tta_scores[c.tta] for c in trained.summary.configs}
    assert df["val_accuracy"].to_dict() == pytest.approx(scores)
    assert "test_resnet" in repr(ens) and "cat, dog, fox" in repr(ens)


def test_import_kit_is_light_and_kit_run_runs_a_recipe(trained, tmp_path):
    code = ("import sys, kit; assert 'torch' not in sys.modules, 'torch imported'; "
            "from kit import run as R; assert callable(kit.run) and R is kit.run and callable(R.finish); "
            "assert 'torch' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    run_dir = _copy_run(trained, tmp_path)  # finished: kit.run reruns only the blend and the submission
    summary = kit.run(str(run_dir))
    assert isinstance(summary, R.Summary) and summary.chosen == trained.report["chosen"]
    assert (run_dir / "submission.csv").read_text() == (trained.run_dir / "submission.csv").read_text()
