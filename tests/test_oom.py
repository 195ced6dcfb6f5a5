"""Out of memory without a GPU: a model whose forward raises torch.OutOfMemoryError (what CUDA raises) on passes of
more rows than it "has memory" for. Training halves the micro-batch and accumulates, so the update is the one of
the full batch (LayerNorm model: exactly, up to float sums); validation and TTA halve the rows of a pass; each says
so; a single image that does not fit is a KitError naming the fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.errors import KitError, OutOfMemory
from kit.recipe import ModelSpec, TrainSpec
from kit.runtime import OUT_OF_MEMORY
from test_train import fit_setup
from kit.train import evaluate, fit
from kit.tta import predict_modes

CPU = torch.device("cpu")
# LayerNorm, no BatchNorm: a batch in two halves gives the gradient of the whole batch
MODEL = ModelSpec(backbone="test_convnext", weights="none", strategy="full")


def limit_rows(net, rows: int, calls: list):
    """Make net's forward raise what CUDA raises when a pass holds more than `rows` images."""
    forward = net.forward

    def limited(x):
        calls.append(len(x))
        if len(x) > rows:
            raise OUT_OF_MEMORY(f"CUDA out of memory (simulated: {len(x)} rows, room for {rows})")
        return forward(x)
    net.forward = limited
    return net


def setup(spec, train):
    return fit_setup(spec, MODEL, train)


def train(spec, out, rows=None, train_spec=None, log=None):
    t = train_spec or TrainSpec(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0)
    net, tl, vl, labels = setup(spec, t)
    calls = []
    if rows is not None:
        limit_rows(net, rows, calls)
    history = fit(net, tl, vl, labels, MODEL, t, out, num_classes=3, device=CPU, channels_last=False, log=log)
    return history, net, calls


def test_training_halves_the_micro_batch_and_keeps_the_update(imagefolder_spec, tmp_path):
    said = []
    full, net_full, _ = train(imagefolder_spec, tmp_path / "full")
    halved, net_half, calls = train(imagefolder_spec, tmp_path / "half", rows=4, log=said.append)
    assert halved.micro_batch == 4 and full.micro_batch is None
    # out of memory once in training (8 rows) and once in the first validation (its 6 images), never again
    assert calls[0] == 8 and [c for c in calls if c > 4] == [8, 6]
    assert any("training (epoch 0, batch 0) on 8 images a pass: 4 a pass from now on" in m and
               "effective batch (8 x accum_steps 1) is unchanged" in m for m in said)
    assert any("validating" in m for m in said)
    # the same updates: two half-batches weighted 1/2 each are the mean over the batch
    for a, b in zip(net_full.state_dict().values(), net_half.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for ra, rb in zip(full.epochs, halved.epochs):
        assert ra["val_log_loss"] == pytest.approx(rb["val_log_loss"], rel=1e-4)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)


def test_accumulation_window_is_redone_whole(imagefolder_spec, tmp_path):
    """With accum_steps 2 the first update spans two batches: running out of memory on the second redoes both."""
    t = TrainSpec(epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0, accum_steps=2)
    full, net_full, _ = train(imagefolder_spec, tmp_path / "full", train_spec=t)
    net, tl, vl, labels = setup(imagefolder_spec, t)
    calls, forward = [], net.forward

    def second_batch_fails(x):  # the first batch fits; from the second on, only 4 rows do
        calls.append(len(x))
        if len(x) > 4 and len(calls) > 1:
            raise OUT_OF_MEMORY("CUDA out of memory (simulated)")
        return forward(x)
    net.forward = second_batch_fails
    history = fit(net, tl, vl, labels, MODEL, t, tmp_path / "half", num_classes=3, device=CPU, channels_last=False,
                  log=lambda m: None)
    assert calls[:5] == [8, 8, 4, 4, 4]  # batch 0 whole, batch 1 out of memory, then batch 0 again in halves...
    assert history.micro_batch == 4
    for a, b in zip(net_full.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_resume_keeps_the_halved_micro_batch(imagefolder_spec, tmp_path):
    t = TrainSpec(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0)
    net, tl, vl, labels = setup(imagefolder_spec, t)
    limit_rows(net, 4, [])

    class Stop(Exception):
        pass

    def stop(epoch, row):
        raise Stop

    with pytest.raises(Stop):
        fit(net, tl, vl, labels, MODEL, t, tmp_path, num_classes=3, device=CPU, channels_last=False,
            on_epoch_end=stop, log=lambda m: None)
    net, tl, vl, labels = setup(imagefolder_spec, t)
    calls = []
    limit_rows(net, 4, calls)
    history = fit(net, tl, vl, labels, MODEL, t, tmp_path, num_classes=3, device=CPU, channels_last=False,
                  resume=True, log=lambda m: None)
    assert len(history.epochs) == 2 and history.micro_batch == 4
    assert 8 not in calls  # the resumed epoch trained at 4 images a pass from its first batch on


def test_a_single_image_that_does_not_fit_is_a_kit_error(imagefolder_spec, tmp_path):
    with pytest.raises(OutOfMemory, match="a single image: the model does not fit; use a smaller backbone") as e:
        train(imagefolder_spec, tmp_path, rows=0, log=lambda m: None)
    assert isinstance(e.value, KitError)


def test_evaluate_halves_the_pass(imagefolder_spec):
    t = TrainSpec(epochs=1, batch_size=8)
    net, _, vl, _ = setup(imagefolder_spec, t)
    want, want_rows = evaluate(net, vl, CPU)
    calls = []
    n = len(want)  # the validation images: one pass of the loader's 16
    with pytest.warns(RuntimeWarning) as said:
        got, rows = evaluate(limit_rows(net, 2, calls), vl, CPU)  # 6 -> 3 -> 2
    assert [str(w.message).split("validating ")[1] for w in said] == [
        f"{n} images a pass: {(n + 1) // 2} a pass from now on", "3 images a pass: 2 a pass from now on"]
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert calls == [6, 3, 2, 2, 2]


def test_tta_halves_the_views_of_a_pass(imagefolder_spec):
    t = TrainSpec(epochs=1, batch_size=8)
    net, _, vl, _ = setup(imagefolder_spec, t)
    kw = dict(input_size=32, device="cpu", channels_last=False, max_batch_views=32, cpu_chunk_pixels=10 ** 9)
    want, idx = predict_modes(net, vl, ["none", "d4"], **kw)
    said, calls = [], []
    got, idx2 = predict_modes(limit_rows(net, 6, calls), vl, ["none", "d4"], log=said.append, **kw)
    np.testing.assert_array_equal(idx, idx2)
    for mode in want:
        np.testing.assert_allclose(got[mode], want[mode], rtol=1e-5, atol=1e-6)
    assert said[0] == "out of memory on cpu predicting views, 32 images a pass: 16 a pass from now on"
    assert len(said) == 3 and max(c for c in calls[len(said):]) <= 4  # 32 -> 16 -> 8 -> 4, then it stays


def test_tta_view_that_does_not_fit_is_a_kit_error(imagefolder_spec):
    net, _, vl, _ = setup(imagefolder_spec, TrainSpec(epochs=1, batch_size=8))
    with pytest.raises(OutOfMemory, match="predicting views, a single image"):
        predict_modes(limit_rows(net, 0, []), vl, ["none"], input_size=32, device="cpu", channels_last=False,
                      log=lambda m: None)


def test_under_torchrun_out_of_memory_stops_with_the_fix(imagefolder_spec, tmp_path, monkeypatch):
    """One rank halving its batch alone would pair its gradient reductions with the other ranks' wrong ones."""
    from kit import distributed
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2, 0))
    monkeypatch.setattr(distributed, "wrap", lambda model, device: model)  # no process group here
    with pytest.raises(OutOfMemory, match="under torchrun, 8 images a process: set train.batch_size lower"):
        train(imagefolder_spec, tmp_path, rows=4, log=lambda m: None)
