"""kit.bundle and `kit export`: a finished run as one folder (or .zip) of safetensors and JSON that predicts as the
run did without the run directory or the training data, refuses unfinished runs with a command that fixes them,
and is refused, unread, when a weights file has been swapped for a pickle."""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import kit
import kit.features
from kit import run as R
from kit.bundle import BUNDLE_FILE, WEIGHTS_FILE, export_bundle
from kit.cli import main
from kit.errors import RunDirError, UnsafeFileError
from kit.predictions import load_predictions
from test_inference import CLASSES, TOL, finished_run, quiet, tiny_recipe  # the same tiny run

pytestmark = pytest.mark.filterwarnings("ignore:this run blends by rank")  # 6 test images: see test_inference


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with finished_run(tmp_path_factory, "bundle") as (base, recipe, root, _):
        run_dir = recipe.run_dir
        report = json.loads((run_dir / "ensemble" / "report.json").read_text())
        weights = report["methods"][report["chosen"]]["weights"]
        yield SimpleNamespace(
            base=base, root=root, test=root / "test", sample=root / "sample_submission.csv", run_dir=run_dir,
            report=report, bundle=export_bundle(run_dir, base / "bundle"),
            configs=[n for n, w in zip(report["members"], weights) if w >= 1e-6 or report["chosen"] == "stack"],
            expected=load_predictions(run_dir / "ensemble" / f"test_{report['chosen']}.npz"))


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _assert_predicts_as_the_run(path, t, tmp_path, name="p.csv"):
    probs = kit.load(path).predict(t.test)
    np.testing.assert_allclose(probs.loc[t.expected.ids].to_numpy(), t.expected.probs, **TOL)
    out = tmp_path / name
    assert main(["predict", str(path), "--images", str(t.test), "--sample", str(t.sample), "--output", str(out)]) == 0
    assert out.read_text() == (t.run_dir / "submission.csv").read_text()


def test_a_bundle_holds_what_inference_needs_and_nothing_else(exported, tmp_path, capsys):
    t, b = exported, exported.bundle
    members = [f"{c}-f0" for c in t.configs]
    assert _files(b) == sorted(["README.md", BUNDLE_FILE, "plan.json"] +
                               [f"members/{m}/{WEIGHTS_FILE}" for m in members])
    manifest = json.loads((b / BUNDLE_FILE).read_text())
    assert manifest["versions"]["kit"] == kit.__version__ and manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["timm"] and manifest["classes"] == list(CLASSES)
    assert manifest["blend"]["method"] == t.report["chosen"]
    assert [c["name"] for c in manifest["configs"]] == t.configs
    assert {c["name"]: c["tta"] for c in manifest["configs"]} == {n: t.report["tta"][n] for n in t.configs}
    plan = json.loads((b / "plan.json").read_text())
    assert [m["name"] for m in plan["members"]] == members  # resolved recipe, data config, overlay per member
    assert {"recipe", "data_config", "pretrained_cfg", "channels_last"} <= set(plan["members"][0])
    from safetensors.torch import load_file
    for m in members:
        state = torch.load(t.run_dir / "members" / m / "best.pt", weights_only=True)["model"]
        saved = load_file(str(b / "members" / m / WEIGHTS_FILE))
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    readme = (b / "README.md").read_text()
    assert "cat, dog, fox" in readme and all(c in readme for c in t.configs) and "kit predict" in readme
    assert f"{manifest['configs'][0]['score']:.4f}" in readme

    assert main(["export", str(t.run_dir), str(tmp_path / "again")]) == 0
    assert re.search(r"bundle .*again: \d+\.\d MB", " ".join(capsys.readouterr().out.split()))


def test_a_bundle_predicts_as_the_run_without_unpickling_anything(exported, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle was unpickled")
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    _assert_predicts_as_the_run(exported.bundle, exported, tmp_path)
    ens = kit.load(exported.bundle)
    assert ens.kind == "bundle" and ens.members == exported.configs and ens.classes == CLASSES
    assert list(ens.summary().index) == exported.configs


def test_a_zip_bundle_predicts_alike(exported, tmp_path, capsys):
    path = export_bundle(exported.run_dir, tmp_path / "tiny", as_zip=True)
    assert path.name == "tiny.zip" and path.is_file()
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["tiny/" + f for f in _files(exported.bundle)]
    _assert_predicts_as_the_run(path, exported, tmp_path)
    assert main(["predict", str(path), "--tta", "hflip"]) == 2  # a bundle has no splits of its own to predict
    assert "--images" in " ".join(capsys.readouterr().err.split())


def test_a_bundle_needs_neither_the_run_nor_the_training_data(exported, tmp_path):
    t = exported
    moved = shutil.copytree(t.bundle, tmp_path / "elsewhere" / "bundle")
    images = shutil.copytree(t.test, tmp_path / "images")
    hidden = t.root.with_name("hidden")
    t.root.rename(hidden)  # data.root of every recipe in the plan no longer exists
    try:
        probs = kit.load(moved).predict(images)
    finally:
        hidden.rename(t.root)
    np.testing.assert_allclose(probs.loc[t.expected.ids].to_numpy(), t.expected.probs, **TOL)


class Planted:
    """A pickle that creates a file when it is unpickled: proof that it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("checksum", ["as exported", "rewritten to match"])
def test_a_pickle_planted_as_weights_is_refused_without_running_it(exported, tmp_path, checksum, capsys):
    bundle = shutil.copytree(exported.bundle, tmp_path / "bundle")
    marker = tmp_path / "ran"
    rel = f"members/{exported.configs[0]}-f0/{WEIGHTS_FILE}"
    data = pickle.dumps({"model": Planted(marker)})
    (bundle / rel).write_bytes(data)
    if checksum != "as exported":
        manifest = json.loads((bundle / BUNDLE_FILE).read_text())
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (bundle / BUNDLE_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeFileError, match=re.escape(str(bundle / rel))):
        kit.load(bundle)
    assert main(["predict", str(bundle), "--images", str(exported.test), "--output", str(tmp_path / "p.csv")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_a_tampered_zip_entry_is_refused(exported, tmp_path):
    path = export_bundle(exported.run_dir, tmp_path / "tiny.zip", as_zip=True)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    rel = f"tiny/members/{exported.configs[0]}-f0/{WEIGHTS_FILE}"
    entries[rel] = pickle.dumps({"model": Planted(tmp_path / "ran")})
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(UnsafeFileError, match="bytes"):
        kit.load(tmp_path / "bad.zip")
    assert not (tmp_path / "ran").exists()


def test_export_refuses_unfinished_members_with_a_command_that_works(exported, tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    run_dir = shutil.copytree(exported.run_dir, tmp_path / "runs" / exported.run_dir.name)
    (run_dir / "members" / "test_resnet-s1-f0" / "done.json").unlink()
    with pytest.raises(RunDirError, match=r"not finished.*train them with: kit train") as e:
        export_bundle(run_dir, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    command = str(e.value).rsplit("train them with: ", 1)[1].split()
    assert command[:2] == ["kit", "train"] and command[-3:] == ["--member", "1", "--resume"]
    assert main(command[1:]) == 0  # the hint, as a user would run it: member 1 was interrupted (last.pt is left)
    capsys.readouterr()
    assert export_bundle(run_dir, tmp_path / "b").is_dir()


def test_export_never_replaces_an_existing_path(exported, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b.zip").write_text("mine")
    with pytest.raises(RunDirError, match="exists"):
        export_bundle(exported.run_dir, tmp_path / "b")
    with pytest.raises(RunDirError, match="exists"):
        export_bundle(exported.run_dir, tmp_path / "b", as_zip=True)
    assert (tmp_path / "b.zip").read_text() == "mine" and not list((tmp_path / "b").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.zip"]  # no temporary folder left behind


def test_a_feature_extraction_member_travels_with_its_head_file(exported, tmp_path, monkeypatch):
    """An svm head (a scikit-learn pipeline, not in the state dict) is the member's head file; one seed, so one
    configuration, and report.json says it is the prediction (no blend chosen)."""
    t = exported
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, t.root, name="svm", model={"strategy": "feature_extract", "head": "svm"},
                         ensemble={"seeds": [0]})
    summary = R.run(recipe, log=quiet)
    run_dir = recipe.run_dir
    report = json.loads((run_dir / "ensemble" / "report.json").read_text())
    assert report["chosen"] is None and report["members"] == ["test_resnet-s0"] and report["methods"] == {}
    member = run_dir / "members" / "test_resnet-s0-f0"
    assert (member / kit.features.HEAD_FILE).is_file()
    bundle = export_bundle(run_dir, tmp_path / "svm_bundle")
    assert (bundle / "members" / "test_resnet-s0-f0" / kit.features.HEAD_FILE).read_bytes() == \
        (member / kit.features.HEAD_FILE).read_bytes()
    expected = summary.configs[0].test
    for path in (run_dir, bundle):
        ens = kit.load(path)
        assert ens.blend.method is None and [c.tta for c in ens.configs] == [summary.configs[0].tta]
        probs = ens.predict(t.test)
        np.testing.assert_allclose(probs.loc[expected.ids].to_numpy(), expected.probs, **TOL)
    out = tmp_path / "svm.csv"
    assert main(["predict", str(bundle), "--images", str(t.test), "--sample", str(t.sample), "--output", str(out)]) == 0
    assert out.read_text() == (run_dir / "submission.csv").read_text()


def test_a_refit_run_predicts_and_exports_with_its_refitted_members(exported, tmp_path, monkeypatch):
    """data.refit: [0, 1]: one validated seed, two members refitted on every image, whose test probabilities
    (averaged) are the submission. New images are predicted, by the run and by its bundle, with those two models,
    scored by the validated one (kit.load looked for out-of-fold files of the refits, which have none: this
    failed before)."""
    t = exported
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, t.root, name="refit", data={"refit": [0, 1]},
                         ensemble={"seeds": [0]})
    summary = R.run(recipe, log=quiet)
    run_dir = recipe.run_dir
    refits = ["test_resnet-s0-refit", "test_resnet-s0-refit-s1"]
    expected = summary.configs[0].test
    tests = [load_predictions(run_dir / "members" / n / "preds" / f"test_{summary.configs[0].tta}.npz") for n in refits]
    np.testing.assert_allclose(expected.probs, np.mean([p.reorder(expected.ids).probs for p in tests], axis=0),
                               rtol=1e-6)
    bundle = export_bundle(run_dir, tmp_path / "refit_bundle")
    assert sorted(p.name for p in (bundle / "members").iterdir()) == refits  # the validated member stays behind
    for path in (run_dir, bundle):
        ens = kit.load(path)
        (config,) = ens.configs
        assert [m.name for m in config.members] == refits and config.score == summary.configs[0].tta_scores[config.tta]
        probs = ens.predict(t.test)
        np.testing.assert_allclose(probs.loc[expected.ids].to_numpy(), expected.probs, **TOL)
    out = tmp_path / "refit.csv"
    assert main(["predict", str(bundle), "--images", str(t.test), "--sample", str(t.sample), "--output", str(out)]) == 0
    assert out.read_text() == (run_dir / "submission.csv").read_text()


@pytest.mark.slow
def test_the_kaggle_code_competition_flow_from_a_wheel_in_a_fresh_environment(exported, tmp_path):
    """The README's flow: `pip wheel . -w dist`, then, where there is no internet, no run directory and no
    training data, `pip install --no-index --find-links dist kit` and `kit predict BUNDLE.zip --images test/`.
    The environment is a new virtual environment seeing the machine's packages (torch, timm, ... as a Kaggle image
    has them) and kit only from the wheel; it predicts the run's own submission."""
    import subprocess
    import sys
    repo = Path(kit.__file__).parent.parent
    dist, notebook = tmp_path / "dist", tmp_path / "notebook"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, cwd=tmp_path)
    assert [p.name for p in dist.glob("kit-*.whl")]
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    # --ignore-installed: this machine has kit installed from its checkout, which a Kaggle image has not
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(dist), "--no-deps",
                    "--ignore-installed", "kit"], check=True, cwd=tmp_path)
    notebook.mkdir()
    bundle = export_bundle(exported.run_dir, notebook / "model", as_zip=True)
    shutil.copytree(exported.test, notebook / "test")
    shutil.copy(exported.sample, notebook / "sample_submission.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KIT_"))}
    env["KIT_CACHE_DIR"] = str(notebook / "cache")
    where = subprocess.run([python, "-c", "import kit; print(kit.__file__)"], cwd=notebook, env=env, check=True,
                           capture_output=True, text=True).stdout
    assert str(tmp_path / "venv") in where  # the wheel's kit, not the checkout's
    done = subprocess.run([python, "-m", "kit", "predict", bundle.name, "--images", "test", "--sample",
                           "sample_submission.csv", "--output", "submission.csv"], cwd=notebook, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (notebook / "submission.csv").read_text() == (exported.run_dir / "submission.csv").read_text()
