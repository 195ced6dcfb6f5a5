"""kit.train.fit on the tiny imagefolder fixture: it learns, checkpoints atomically, resumes to the same result
as an uninterrupted run, is repeatable per seed, stops early, and fails clearly on a diverging loss."""
from __future__ import annotations

import math

import numpy as np
from conftest import data_config
import pytest

from kit.errors import RunDirError
import torch

from kit.data import (ImageDataset, create_eval_transform, create_train_transform, load_sources, make_folds,
                      make_loader)
from kit.models.backbone import build_model
from kit.recipe import AugmentSpec, ModelSpec, TrainSpec
from kit.rundir import atomic_save, write_csv_atomic
from kit.runtime import seed_everything
from kit.train import History, fit

CPU = torch.device("cpu")
AUGMENT = AugmentSpec(input_size=32)


class Interrupt(Exception):
    pass


def fit_setup(data_spec, model: ModelSpec, train: TrainSpec):
    """What kit.member_train builds for a member, from seeds: (net, train loader, validation loader, labels)."""
    seed_everything(train.seed)
    net, _ = build_model(model, 3)
    sources = load_sources(data_spec)
    folds = make_folds(sources.train.labels, data_spec)
    cfg = data_config(net, AUGMENT)
    tr, va = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    train_loader = make_loader(ImageDataset(sources.train, tr, create_train_transform(AUGMENT, cfg)), train.batch_size,
                               shuffle=True, num_workers=0, seed=train.seed, drop_last=True)
    val_loader = make_loader(ImageDataset(sources.train, va, create_eval_transform(cfg)), 16, shuffle=False,
                             num_workers=0, seed=train.seed)
    return net, train_loader, val_loader, sources.train.labels


def train_run(data_spec, out_dir, *, model=None, train=None, resume=False, on_epoch_end=None, wrap=None):
    """Build everything from seeds, as kit.member_train does, and fit; returns (history, model). `wrap` may replace
    the training loader by a wrapper of it."""
    model = model or ModelSpec(backbone="test_resnet", weights="none", strategy="full")
    train = train or TrainSpec(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=0)
    net, train_loader, val_loader, labels = fit_setup(data_spec, model, train)
    if wrap is not None:
        train_loader = wrap(train_loader)
    history = fit(net, train_loader, val_loader, labels, model, train, out_dir, num_classes=3, device=CPU,
                  channels_last=False, resume=resume, on_epoch_end=on_epoch_end)
    return history, net


def metrics(history: History) -> list[dict]:
    """The rows without wall-clock measurements."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "train_images_per_s")} for row in history.epochs]


def interrupt_at(epoch):
    def hook(e, row):
        if e == epoch:
            raise Interrupt(f"stopped after epoch {e}")
    return hook


def test_fit_learns_and_writes_checkpoints(imagefolder_spec, tmp_path):
    out = tmp_path / "m"
    seen = []
    # lr 1e-2 for 5 epochs: val accuracy 1.0 for seeds 0-5 (3e-3 for 4 epochs stayed at chance for 2 of 6)
    train = TrainSpec(epochs=5, batch_size=8, lr=1e-2, warmup_epochs=0)
    history, net = train_run(imagefolder_spec, out, train=train,
                             on_epoch_end=lambda e, row: seen.append((e, row["val_accuracy"])))
    assert [e for e, _ in seen] == [0, 1, 2, 3, 4] and len(history.epochs) == 5
    assert history.best_score > 0.5  # chance is 1/3; the classes are coloured bars
    assert history.epochs[-1]["val_log_loss"] < 0.8  # chance: log(3) = 1.10
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.best_score == max(r["val_accuracy"] for r in history.epochs)
    assert history.best_epoch == [r["val_accuracy"] for r in history.epochs].index(history.best_score)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.pt", "history.csv", "last.pt"]  # no temp files left
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == history.best_epoch and best["score"] == history.best_score
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 4
    for k, v in net.state_dict().items():
        assert torch.equal(v, last["model"][k]), k
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("epoch,train_loss,val_")
    for row in history.epochs:
        assert {"val_accuracy", "val_log_loss", "val_f1_macro", "lr", "frozen_stages"} <= set(row)


def test_atomic_save_leaves_no_temp_file_and_keeps_the_old_one(tmp_path):
    path = atomic_save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(Exception):
        atomic_save({"f": lambda: 0}, path)  # a lambda cannot be pickled: the write fails half way
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    write_csv_atomic(tmp_path / "h.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert (tmp_path / "h.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]


@pytest.mark.parametrize("case", ["plain", "gradual_ema_mixup"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(imagefolder_spec, tmp_path, case):
    model, train = None, TrainSpec(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=0.5, seed=5)
    if case != "plain":
        model = ModelSpec(backbone="test_resnet", weights="none", strategy="gradual", backbone_lr_scale=0.5)
        train = train.model_copy(update={"ema": True, "ema_decay": 0.9, "mixup": 0.4})
    ref, ref_net = train_run(imagefolder_spec, tmp_path / "ref", model=model, train=train)
    with pytest.raises(Interrupt):
        train_run(imagefolder_spec, tmp_path / "cut", model=model, train=train, on_epoch_end=interrupt_at(1))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    resumed_epochs = []
    again, net = train_run(imagefolder_spec, tmp_path / "cut", model=model, train=train, resume=True,
                           on_epoch_end=lambda e, row: resumed_epochs.append(e))
    assert resumed_epochs == [2]  # only what was left
    assert metrics(again) == metrics(ref)
    if case != "plain":
        assert [r["frozen_stages"] for r in ref.epochs] == [5, 4, 3]
    assert (again.best_epoch, again.best_score) == (ref.best_epoch, ref.best_score)
    for k, v in ref_net.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    a = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class EpochLoader:
    """A training loader with set_epoch (as kit.data's loaders have): records the epochs fit announces."""

    def __init__(self, loader, calls):
        self.loader, self.generator, self.calls = loader, loader.generator, calls

    def __iter__(self):
        self.calls.append(("iter", self.generator.initial_seed()))
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.calls.append(("set_epoch", epoch))


def test_fit_announces_each_epoch_to_the_loader_before_iterating_it(imagefolder_spec, tmp_path):
    train = TrainSpec(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=0, seed=4)
    calls = []
    with pytest.raises(Interrupt):
        train_run(imagefolder_spec, tmp_path / "m", train=train, on_epoch_end=interrupt_at(1),
                  wrap=lambda loader: EpochLoader(loader, calls))
    seeds = [4 * 100_003 + e for e in range(3)]  # the shuffle generator is still reseeded from (seed, epoch)
    assert calls == [("set_epoch", 0), ("iter", seeds[0]), ("set_epoch", 1), ("iter", seeds[1])]
    calls.clear()
    train_run(imagefolder_spec, tmp_path / "m", train=train, resume=True,
              wrap=lambda loader: EpochLoader(loader, calls))
    assert calls == [("set_epoch", 2), ("iter", seeds[2])]  # a resumed run announces the epoch it starts at


def test_checkpoints_hold_only_tensors_and_plain_values(imagefolder_spec, tmp_path):
    """last.pt loads with weights_only=True (the numpy RNG state as a tensor, the history as plain numbers),
    with mixup on, whose draws come from numpy's global generator."""
    train = TrainSpec(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0, mixup=0.4)
    train_run(imagefolder_spec, tmp_path / "m", train=train)
    last = torch.load(tmp_path / "m" / "last.pt", weights_only=True)
    assert isinstance(last["rng"]["numpy"]["keys"], torch.Tensor) and last["rng"]["numpy"]["keys"].shape == (624,)
    row = last["history"]["epochs"][0]
    assert all(type(v) in (int, float, str, bool) for v in row.values()), row
    assert type(last["history"]["best_score"]) is float


def test_rerun_without_resume_refuses(imagefolder_spec, tmp_path):
    train = TrainSpec(epochs=1, batch_size=8, warmup_epochs=0)
    train_run(imagefolder_spec, tmp_path / "m", train=train)
    with pytest.raises(RunDirError, match="--resume"):
        train_run(imagefolder_spec, tmp_path / "m", train=train)
    # resuming a finished run trains nothing more and returns its history
    calls = []
    history, _ = train_run(imagefolder_spec, tmp_path / "m", train=train, resume=True,
                           on_epoch_end=lambda e, r: calls.append(e))
    assert calls == [] and len(history.epochs) == 1


def test_same_seed_same_history_other_seed_differs(imagefolder_spec, tmp_path):
    train = TrainSpec(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0, seed=1)
    a, _ = train_run(imagefolder_spec, tmp_path / "a", train=train)
    b, _ = train_run(imagefolder_spec, tmp_path / "b", train=train)
    c, _ = train_run(imagefolder_spec, tmp_path / "c", train=train.model_copy(update={"seed": 2}))
    assert metrics(a) == metrics(b)
    assert [r["train_loss"] for r in a.epochs] != [r["train_loss"] for r in c.epochs]


def test_early_stopping_stops_and_stays_stopped(imagefolder_spec, tmp_path):
    # a frozen backbone (BatchNorm statistics too) and a negligible lr: the score cannot improve after epoch 0
    model = ModelSpec(backbone="test_resnet", weights="none", strategy="feature_extract")
    train = TrainSpec(epochs=10, batch_size=8, lr=1e-12, warmup_epochs=0, scheduler="none", early_stopping=2)
    history, _ = train_run(imagefolder_spec, tmp_path / "m", model=model, train=train)
    assert history.stopped_early and len(history.epochs) == 3 and history.best_epoch == 0
    calls = []
    again, _ = train_run(imagefolder_spec, tmp_path / "m", model=model, train=train, resume=True,
                         on_epoch_end=lambda e, r: calls.append(e))
    assert calls == [] and len(again.epochs) == 3


@pytest.mark.parametrize("update", [
    {"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1},
    {"ema": True, "ema_decay": 0.9},
    {"accum_steps": 2, "grad_clip": 1.0},
    {"scheduler": "onecycle", "optimizer": "sgd", "lr": 0.05},
], ids=["mixup_cutmix", "ema", "accum_clip", "onecycle_sgd"])
def test_training_options_run_with_finite_losses(imagefolder_spec, tmp_path, update):
    train = TrainSpec(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0).model_copy(update=update)
    history, _ = train_run(imagefolder_spec, tmp_path / "m", train=train)
    assert len(history.epochs) == 2
    for row in history.epochs:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_log_loss"]) and row["lr"] > 0


def test_ema_weights_are_what_best_pt_holds(imagefolder_spec, tmp_path):
    train = TrainSpec(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0, ema=True, ema_decay=0.5)
    _, net = train_run(imagefolder_spec, tmp_path / "m", train=train)
    best = torch.load(tmp_path / "m" / "best.pt", weights_only=True)["model"]
    assert set(best) == set(net.state_dict())
    assert not torch.equal(best["fc.weight"], net.state_dict()["fc.weight"])  # the average, not the live weights


def test_diverging_loss_raises_a_clear_error(imagefolder_spec, tmp_path):
    train = TrainSpec(epochs=3, batch_size=8, lr=1e12, optimizer="sgd", momentum=0.0, warmup_epochs=0,
                      scheduler="none")
    # momentum 0: plain SGD (timm's "sgd" is Nesterov, which needs momentum)
    with pytest.raises(FloatingPointError, match=r"training loss is -?(nan|inf) at epoch 0, batch \d+; "
                                                 r"lower train\.lr \(now 1000000000000\.0\) or set train\.grad_clip"):
        train_run(imagefolder_spec, tmp_path / "m", train=train)


@pytest.mark.slow
def test_compiled_training_saves_the_plain_model(imagefolder_spec, tmp_path):
    """train.compile: torch.compile (inductor, a C++ compiler on the CPU: slow to start, hence `slow`); the
    checkpoints hold the model's own keys, so that a plain model loads them."""
    history, net = train_run(imagefolder_spec, tmp_path, train=TrainSpec(epochs=1, batch_size=8, lr=3e-3,
                                                                         warmup_epochs=0, compile=True))
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert not [k for k in best if "_orig_mod" in k] and set(best) == set(net.state_dict())
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0]["val_log_loss"])
