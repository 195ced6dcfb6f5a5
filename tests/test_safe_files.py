"""Nothing kit reads back from disk runs code. In each place kit reads a file (a member's last.pt on resume, its
best.pt, the scikit-learn head file, model.weights) a planted pickle whose unpickling would create a marker
file is refused: the marker is never created, and the UnsafeFileError names the file and says why. Corrupt
files are refused the same way."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import timm
import torch

from kit import features as F
from kit.errors import KitError, UnsafeFileError
from kit.models.pretrained import load_pretrained, read_weights_file
from kit.recipe import ModelSpec, TrainSpec, recipe_from_dict
from kit.rundir import member_dir
from kit.train import fit, load_checkpoint


class _System:
    """Unpickled, runs `touch marker` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Open:
    """Unpickled, creates the marker with open(marker, 'w')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


PAYLOADS = {"os_system": _System, "open": _Open}


@pytest.fixture(params=sorted(PAYLOADS))
def plant(request, tmp_path):
    """plant(path, format): write a code-running pickle at `path` (inside a torch checkpoint or as a plain
    pickle); returns the marker its unpickling would create."""
    marker = tmp_path / f"marker_{request.param}"

    def write(path, fmt="torch"):
        payload = {"model": {"weight": torch.zeros(2)}, "epoch": 0, "x": PAYLOADS[request.param](marker)}
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "torch":
            torch.save(payload, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(payload, f)
        assert not marker.exists()
        return marker
    return write


def test_the_payloads_do_run_code_when_unpickled(plant, tmp_path):
    """The planted files are real attacks: plain unpickling creates the marker."""
    marker = plant(tmp_path / "x.pkl", fmt="pickle")
    with open(tmp_path / "x.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def _head_training_inputs():
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    return (rng.normal(size=(30, 4)) + y[:, None]).astype(np.float32), y


def _fit_head(out_dir, resume):
    x, y = _head_training_inputs()
    head = torch.nn.Linear(4, 3)
    train = F.embedding_loader(x[:24], y[:24], 8, shuffle=True, seed=0)
    val = F.embedding_loader(x[24:], y[24:], 8, shuffle=False, seed=0)
    return fit(head, train, val, y[24:], ModelSpec(strategy="feature_extract"),
               TrainSpec(epochs=2, batch_size=8, warmup_epochs=0), out_dir, num_classes=3,
               device=torch.device("cpu"), channels_last=False, resume=resume)


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_planted_last_pt_is_refused_on_resume(plant, tmp_path, fmt):
    out = tmp_path / "runs" / "x" / "members" / "m"
    marker = plant(out / "last.pt", fmt)
    with pytest.raises(UnsafeFileError) as info:
        _fit_head(out, resume=True)
    assert not marker.exists()
    message = str(info.value)
    assert str(out / "last.pt") in message and "kit loads only tensors" in message
    assert "delete it to retrain that member" in message and "weights_only=False" not in message
    if fmt == "torch":
        assert "holds Python objects besides tensors (a pickle that could run code" in message
    else:
        assert "a pickle that is not a torch file of tensors" in message


def test_a_last_pt_of_the_old_format_is_refused_naming_numpy(tmp_path):
    """Before, last.pt kept numpy's RNG state as a tuple with an ndarray: such a file needs the unpickler to
    build numpy objects, which weights_only refuses; kit says so instead of failing with a traceback."""
    out = tmp_path / "m"
    _fit_head(out, resume=False)
    state = torch.load(out / "last.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, out / "last.pt")
    with pytest.raises(UnsafeFileError, match=r"last\.pt holds Python objects besides tensors.*numpy"):
        _fit_head(out, resume=True)


def test_a_truncated_or_foreign_last_pt_is_refused(tmp_path):
    out = tmp_path / "m"
    _fit_head(out, resume=False)
    good = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnsafeFileError, match=r"last\.pt is corrupt"):
        _fit_head(out, resume=True)
    torch.save({"weight": torch.zeros(3, 4)}, out / "last.pt")  # tensors, but not a training checkpoint
    with pytest.raises(UnsafeFileError, match=r"last\.pt is not a kit training checkpoint \(no epoch"):
        _fit_head(out, resume=True)


def test_planted_best_pt_is_refused(plant, tmp_path):
    marker = plant(tmp_path / "m" / "best.pt")
    with pytest.raises(UnsafeFileError, match=r"best\.pt holds Python objects besides tensors") as info:
        load_checkpoint(tmp_path / "m" / "best.pt")
    assert not marker.exists() and str(tmp_path / "m" / "best.pt") in str(info.value)


def _feature_member(tmp_path, kaggle_spec, head):
    """A finished feature_extract member (the fastest member kit trains) and its run context."""
    from kit.context import prepare_run
    from kit.member_train import train_member
    recipe = recipe_from_dict({
        "name": "safe", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {**kaggle_spec.model_dump(), "num_workers": 0}, "augment": {"input_size": 32},
        "model": {"backbone": "test_resnet", "weights": "none", "strategy": "feature_extract",
                  "channels_last": False, "head": head},
        "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0}, "ensemble": {"seeds": [0]}})
    ctx = prepare_run(recipe)
    member = ctx.plan.members[0]
    train_member(ctx, member)
    return ctx, member, member_dir(ctx.run_dir, member.name)


@pytest.fixture
def kit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "kitcache"))


def test_planted_best_pt_of_a_finished_member_is_refused(plant, tmp_path, kaggle_spec, kit_cache):
    from kit.member_predict import load_member_model
    ctx, member, out = _feature_member(tmp_path, kaggle_spec, "logreg")
    marker = plant(out / "best.pt")
    with pytest.raises(UnsafeFileError) as info:
        load_member_model(ctx, member, torch.device("cpu"))
    assert not marker.exists() and str(out / "best.pt") in str(info.value)


def test_planted_sklearn_head_file_is_refused(plant, tmp_path, kaggle_spec, kit_cache):
    ctx, member, out = _feature_member(tmp_path, kaggle_spec, "svm")
    spec = member.recipe.model
    model = timm.create_model("test_resnet", num_classes=3)
    F.restore_member_model(model, spec, out)  # the genuine skops file loads
    marker = plant(out / F.HEAD_FILE, fmt="pickle")
    with pytest.raises(UnsafeFileError) as info:
        F.restore_member_model(timm.create_model("test_resnet", num_classes=3), spec, out)
    assert not marker.exists()
    assert str(out / F.HEAD_FILE) in str(info.value) and "is not a skops file" in str(info.value)
    # a pickle left by an older kit (head.pkl) is never read either
    os.replace(out / F.HEAD_FILE, out / F.LEGACY_HEAD_FILE)
    with pytest.raises(UnsafeFileError, match=r"head\.pkl is a pickle written by an older kit") as info:
        F.restore_member_model(timm.create_model("test_resnet", num_classes=3), spec, out)
    assert not marker.exists() and f"delete {out}" in str(info.value)


def test_a_skops_head_with_an_untrusted_type_is_refused_naming_it(tmp_path):
    """Only the explicit trusted types are built: a head file naming a function (os.system) is refused."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    evil = make_pipeline(FunctionTransformer(os.system), LogisticRegression())
    path = F.save_sklearn_head(evil, tmp_path / "m" / F.HEAD_FILE)
    with pytest.raises(UnsafeFileError, match=r"head\.skops holds types kit does not load \(posix\.system\)"):
        F.load_sklearn_head(path)
    (tmp_path / "m" / F.HEAD_FILE).write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(UnsafeFileError, match=r"head\.skops is not a skops file"):
        F.load_sklearn_head(path)


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_planted_model_weights_are_refused(plant, tmp_path, fmt):
    path = tmp_path / "weights.pth"
    marker = plant(path, fmt)
    model = timm.create_model("test_resnet", num_classes=3)
    with pytest.raises(UnsafeFileError) as info:
        load_pretrained(model, "test_resnet", str(path))
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "kit loads only tensors" in message and "safetensors" in message
    assert "weights_only=False" not in message


def test_model_weights_from_the_cli_exit_2_naming_the_file(plant, tmp_path, capsys):
    from PIL import Image
    from kit.cli import main
    path = tmp_path / "weights.pt"
    marker = plant(path)
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["classify", str(image), "--model", "test_resnet", "--weights", str(path)]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "weights.pt" in err and "holds Python objects besides tensors" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickle"])
def test_corrupt_safetensors_is_refused_naming_the_file(tmp_path, damage):
    from safetensors.torch import save_file
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(path))
    assert read_weights_file(path)  # the intact file loads
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(pickle.dumps(_System(tmp_path / "marker")))
    with pytest.raises(UnsafeFileError, match=r"weights\.safetensors is not a valid safetensors file") as info:
        read_weights_file(path)
    assert str(path) in str(info.value) and not (tmp_path / "marker").exists()
    assert isinstance(info.value, KitError)
