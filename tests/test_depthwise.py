"""kit.models.depthwise: weight gradients of depthwise convolutions tap by tap, where the kernel is wider than the
map; and the plan's timed choice of them (kit.runtime.use_depthwise_taps)."""
from __future__ import annotations

import itertools
import json

import pytest
import timm
import torch
import torch.nn.functional as F

import kit.runtime
from kit.models.depthwise import TapDepthwiseConv2d, tap_candidates, use_tap_gradients
from kit.runtime import use_depthwise_taps

CPU = torch.device("cpu")


def _grads(conv, x, g):
    return torch.autograd.grad(conv(x), [x, *conv.parameters()], g)


@pytest.mark.parametrize("kernel,stride,padding,bias", [
    ((5, 5), 1, 2, False), ((3, 3), 1, 1, True), ((5, 5), 2, 2, False), ((3, 5), 2, 1, True), ((5, 5), 3, 0, False),
    ((3, 3), 2, 0, True)])
def test_gradients_equal_torchs_on_maps_smaller_and_larger_than_the_kernel(kernel, stride, padding, bias):
    torch.manual_seed(0)
    for h, w in ((1, 1), (2, 2), (3, 5), (4, 4), (9, 7)):
        if (h + 2 * padding - kernel[0]) < 0 or (w + 2 * padding - kernel[1]) < 0:
            continue  # no output
        ref = torch.nn.Conv2d(6, 6, kernel, stride, padding, groups=6, bias=bias)
        taps = torch.nn.Conv2d(6, 6, kernel, stride, padding, groups=6, bias=bias)
        taps.load_state_dict(ref.state_dict())
        assert use_tap_gradients(taps) == 1 and type(taps) is TapDepthwiseConv2d
        x = torch.randn(3, 6, h, w, requires_grad=True)
        out = taps(x)
        assert (type(out.grad_fn).__name__ == "_TapDepthwiseBackward") == (kernel[0] > h or kernel[1] > w)
        torch.testing.assert_close(out, ref(x))
        g = torch.randn_like(out)
        for a, b in zip(_grads(taps, x, g), _grads(ref, x, g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_a_cpu_weight_gradient_takes_the_taps():
    conv = torch.nn.Conv2d(4, 4, 5, padding=2, groups=4)
    use_tap_gradients(conv)
    x = torch.randn(2, 4, 2, 2)
    assert type(conv(x).grad_fn).__name__ == "_TapDepthwiseBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    conv.weight.requires_grad_(False)  # a frozen stage: oneDNN's input gradient only
    assert type(conv(x.requires_grad_()).grad_fn).__name__ != "_TapDepthwiseBackward"


def test_a_model_converted_keeps_its_state_dict_and_gradients():
    torch.manual_seed(0)
    ref = timm.create_model("test_efficientnet", num_classes=3)
    model = timm.create_model("test_efficientnet", num_classes=3)
    model.load_state_dict(ref.state_dict())
    n_dw = sum(1 for m in ref.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
    assert use_tap_gradients(model) == n_dw > 0
    assert list(model.state_dict()) == list(ref.state_dict())
    assert tap_candidates(model, 32) >= 1 and tap_candidates(model, 256) == 0
    x = torch.randn(4, 3, 32, 32)
    ref.train(), model.train()
    F.cross_entropy(ref(x), torch.tensor([0, 1, 2, 0])).backward()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_only_plain_depthwise_convolutions_are_converted():
    grouped = torch.nn.Conv2d(4, 8, 3, groups=2)  # not depthwise
    dilated = torch.nn.Conv2d(4, 4, 3, dilation=2, groups=4)
    same = timm.layers.create_conv2d(4, 4, 3, stride=2, padding="same", depthwise=True)  # Conv2dSame: own padding
    for m in (grouped, dilated, torch.nn.Conv2d(4, 4, 3), same):
        assert use_tap_gradients(m) == 0, m


def test_the_choice_is_timed_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))
    model = timm.create_model("test_efficientnet", num_classes=3)
    calls = []

    def timed(m, size, device, variants, **k):
        calls.append(sorted(variants))
        return {"onednn": 2.0, "taps": 1.0}
    monkeypatch.setattr(kit.runtime, "_time_steps", timed)
    assert use_depthwise_taps(None, model, 32, CPU, True) is True
    assert use_depthwise_taps(None, model, 32, CPU, True) is True
    assert calls == [["onednn", "taps"]]
    assert len(json.loads((tmp_path / "depthwise_taps.json").read_text())) == 1
    monkeypatch.setattr(kit.runtime, "_time_steps", lambda *a, **k: {"onednn": 1.0, "taps": 2.0})
    assert use_depthwise_taps(None, model, 32, CPU, False) is False  # another format: its own timing
    assert use_depthwise_taps(False, model, 32, CPU, True) is False  # the recipe's setting wins
    assert use_depthwise_taps(True, model, 256, CPU, True) is True


def test_nothing_is_timed_where_no_kernel_is_wider_than_its_map(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))

    def fail(*a, **k):
        raise AssertionError("timed")
    monkeypatch.setattr(kit.runtime, "_time_steps", fail)
    assert use_depthwise_taps(None, timm.create_model("test_efficientnet"), 256, CPU, True) is False
    assert use_depthwise_taps(None, timm.create_model("test_resnet"), 32, CPU, True) is False
    assert use_depthwise_taps(None, timm.create_model("test_efficientnet"), 32, torch.device("meta"), True) is False


def test_the_real_timing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path))
    model = timm.create_model("test_efficientnet", num_classes=3)
    before = [p.clone() for p in model.state_dict().values()]
    assert isinstance(use_depthwise_taps(None, model, 32, CPU, True), bool)
    times = next(iter(json.loads((tmp_path / "depthwise_taps.json").read_text()).values()))
    assert set(times) == {"onednn", "taps"} and all(0 < t < 60 for t in times.values())
    assert all(type(m) is not TapDepthwiseConv2d for m in model.modules())  # copies were timed
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))


@pytest.mark.parametrize("kernel,h", list(itertools.product([3, 5], [2, 4])))
def test_candidates_count_kernels_wider_than_their_input(kernel, h):
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, kernel, padding=kernel // 2, groups=4))
    assert tap_candidates(seq, h) == int(kernel > h)
