import numpy as np
import pytest
import timm
import torch
import ttach
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kit.recipe import TTA_MODES
from kit.tta import (MERGES, CenterCrop, merge_views, n_views, predict_modes, predict_proba, tta_resize,
                     tta_transforms)

S = 32  # model input size; images are R x R = 37 x 37 (odd difference: 5 pixels)
R = 37
SCALES = (0.875, 1.0, 1.125)


class TinyNet(nn.Module):
    """A convnet with global pooling (accepts any size) and batch norm, whose views give different outputs."""

    def __init__(self, classes=5, scale=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, classes)
        self.scale = scale  # x100 makes extreme logits

    def forward(self, x):
        return self.fc(self.body(x)) * self.scale


class Centre(nn.Module):
    def forward(self, logits):
        return logits - logits.mean(dim=-1, keepdim=True)


class SoftmaxModel(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=-1)


def make_model(seed=0, scale=1.0):
    torch.manual_seed(seed)
    model = TinyNet(scale=scale).eval()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode batch norm matters
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    return model


def make_loader(n=10, h=R, w=R, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=g)
    data = TensorDataset(images, torch.zeros(n, dtype=torch.long), torch.arange(n) + 100)
    return DataLoader(data, batch_size=batch, shuffle=False)  # 4 + 4 + 2: the last batch is short


def ttach_reference(model, loader, mode, merge, size=S, scales=SCALES):
    """ttach's sequential wrapper (one forward per view) on softmax outputs, rows renormalised."""
    wrapper = ttach.ClassificationTTAWrapper(SoftmaxModel(model), tta_transforms(mode, size, scales), merge_mode=merge)
    out = []
    with torch.inference_mode():
        for images, _, _ in loader:
            p = wrapper(images)
            out.append(p / p.sum(dim=-1, keepdim=True))
    return torch.cat(out).numpy()


def assert_probabilities(p):
    assert p.dtype == np.float32
    assert not np.isnan(p).any()
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine a second thread waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EXPECTED_VIEWS = {"none": 1, "hflip": 2, "vflip": 2, "flip": 4, "d4": 8, "five_crop": 5, "ten_crop": 10,
                  "ten_crop_vflip": 20, "multiscale": 6}


@pytest.mark.parametrize("mode", TTA_MODES)
def test_number_of_views(mode):
    assert n_views(mode) == EXPECTED_VIEWS[mode]
    assert len(tta_transforms(mode, S)) == EXPECTED_VIEWS[mode]
    x = torch.randn(1, 3, R, R)
    sizes = {tuple(t.augment_image(x).shape[-2:]) for t in tta_transforms(mode, S)}
    expected = {(28, 28), (32, 32), (36, 36)} if mode == "multiscale" else {(S, S)}
    assert sizes == expected


def test_views_are_distinct_and_first_is_centre_crop():
    x = torch.randn(2, 3, R, R)
    for mode in TTA_MODES:
        views = [t.augment_image(x) for t in tta_transforms(mode, S)]
        same = [v for v in views if v.shape == (2, 3, S, S) and torch.equal(v, CenterCrop(S, S).apply_aug_image(
            x, size=(S, S)))]
        assert len(same) == 1, mode  # exactly one un-augmented view
        for i in range(len(views)):
            for j in range(i):
                assert views[i].shape != views[j].shape or not torch.equal(views[i], views[j]), (mode, i, j)


def test_center_crop_uneven():
    x = torch.arange(37.0).view(1, 1, 1, 37).expand(1, 3, 37, 37)
    crop = tta_transforms("none", 32)
    (t,) = list(crop)
    assert t.augment_image(x)[0, 0, 0, 0].item() == 2.0  # 37 - 32 = 5: 2 pixels left, 3 right, like FiveCrops


def test_tta_resize():
    assert tta_resize(224, 0.875, None) == 256
    assert tta_resize(224, 0.95, 240) == 240
    with pytest.raises(ValueError, match="at least 224"):
        tta_resize(224, 0.875, 200)
    with pytest.raises(ValueError, match="crop_pct"):
        tta_resize(224, 0.0, None)


def test_identity_equals_plain_prediction():
    model, loader = make_model(), make_loader()
    probs, rows = predict_proba(model, loader, "none", input_size=S)
    images = torch.cat([x for x, _, _ in loader])
    lo = (R - S) // 2
    with torch.no_grad():
        plain = model(images[:, :, lo:lo + S, lo:lo + S]).softmax(-1).numpy()
    np.testing.assert_allclose(probs, plain, atol=1e-6)
    np.testing.assert_array_equal(rows, np.arange(10) + 100)
    assert rows.dtype == np.int64


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("mode", TTA_MODES)
def test_batched_equals_sequential_ttach(mode, merge):
    model, loader = make_model(), make_loader()
    probs, _ = predict_proba(model, loader, mode, merge, input_size=S)
    np.testing.assert_allclose(probs, ttach_reference(model, loader, mode, merge), atol=1e-5)
    assert_probabilities(probs)


@pytest.mark.parametrize("mode, alias", [("five_crop", ttach.aliases.five_crop_transform(S, S)),
                                         ("ten_crop", ttach.aliases.ten_crop_transform(S, S))])
def test_same_views_as_ttach_aliases(mode, alias):
    """ttach's ten_crop flips the R x R image, then crops; ours crops, then flips: the same 10 views when R - S
    is even. When it is odd ttach's flipped centre view is 1 pixel off the centre; ours mirrors the same pixels."""
    model, loader = make_model(), make_loader(h=36, w=36)
    wrapper = ttach.ClassificationTTAWrapper(SoftmaxModel(model), alias, merge_mode="mean")
    with torch.inference_mode():
        expected = torch.cat([wrapper(x) for x, _, _ in loader]).numpy()
    np.testing.assert_allclose(predict_proba(model, loader, mode, input_size=S)[0], expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "ten_crop", "d4", "multiscale"])
def test_timm_model(mode):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    loader = make_loader(n=6, batch=3)
    probs, _ = predict_proba(model, loader, mode, "gmean", input_size=S)
    np.testing.assert_allclose(probs, ttach_reference(model, loader, mode, "gmean"), atol=1e-5)


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("mode", TTA_MODES)
def test_extreme_logits_still_probabilities(mode, merge):
    model, loader = make_model(scale=100.0), make_loader()
    probs, _ = predict_proba(model, loader, mode, merge, input_size=S, original_weight=0.4)
    assert_probabilities(probs)
    probs, _ = predict_proba(model, loader, mode, merge, input_size=S)
    assert_probabilities(probs)


def test_merge_of_disagreeing_views():
    """Two views, each certain of a different class: ttach's gmean of probabilities is 0 / 0, ours is finite."""
    logits = torch.tensor([[[200.0, 0.0, 0.0]], [[0.0, 200.0, 0.0]]])  # [V=2, B=1, C=3]
    logp = logits.log_softmax(-1)
    merger = ttach.base.Merger("gmean", n=2)
    for p in logp.exp():
        merger.append(p)
    assert torch.isnan(merger.result / merger.result.sum(-1, keepdim=True)).all()
    for merge in MERGES:
        p = merge_views(logp, merge)
        assert torch.isfinite(p).all() and abs(p.sum().item() - 1) < 1e-6
    np.testing.assert_allclose(merge_views(logp, "gmean")[0, :2], [0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("merge", ["gmean", "tsharpen"])
def test_ttach_on_logits_gives_nan_ours_does_not(merge):
    tiny = make_model()
    model = nn.Sequential(tiny, Centre())  # logits of both signs; the same softmax
    loader = make_loader()
    wrapper = ttach.ClassificationTTAWrapper(model, tta_transforms("five_crop", S), merge_mode=merge)
    with torch.inference_mode():
        on_logits = torch.cat([wrapper(x) for x, _, _ in loader])
    # tsharpen: negative logit ** 0.5; gmean: (product of 5 views' logits, negative when all are) ** (1/5)
    assert torch.isnan(on_logits).any()
    probs, _ = predict_proba(model, loader, "five_crop", merge, input_size=S)
    np.testing.assert_allclose(probs, predict_proba(tiny, loader, "five_crop", merge, input_size=S)[0], atol=1e-6)
    assert_probabilities(probs)


@pytest.mark.parametrize("mode", TTA_MODES)
def test_non_square_and_uneven_sizes(mode):
    model = make_model()
    loader = make_loader(h=41, w=52)
    probs, _ = predict_proba(model, loader, mode, input_size=S)
    assert probs.shape == (10, 5)
    assert_probabilities(probs)
    np.testing.assert_allclose(probs, ttach_reference(model, loader, mode, "mean"), atol=1e-5)
    probs, _ = predict_proba(model, make_loader(h=40, w=33), mode, input_size=31)  # odd crop, even image
    assert_probabilities(probs)


@pytest.mark.parametrize("mode", ["hflip", "ten_crop", "multiscale"])
def test_chunking_changes_nothing(mode):
    model, loader = make_model(), make_loader()
    small, _ = predict_proba(model, loader, mode, "tsharpen", input_size=S, max_batch_views=3)
    one, _ = predict_proba(model, loader, mode, "tsharpen", input_size=S, max_batch_views=10_000)
    plain, _ = predict_proba(model, loader, mode, "tsharpen", input_size=S, channels_last=False, max_batch_views=1)
    np.testing.assert_allclose(small, one, atol=1e-6)
    np.testing.assert_allclose(plain, one, atol=1e-6)


def test_cpu_chunks_are_capped_in_pixels(monkeypatch):
    model, loader = make_model(), make_loader()
    rows_run = []
    counting = nn.Module()
    counting.forward = lambda x: (rows_run.append(x.shape[0]), model(x))[1]
    full, _ = predict_proba(model, loader, "ten_crop", input_size=S)
    monkeypatch.setattr("kit.tta.CPU_CHUNK_PIXELS", 3 * S * S)
    capped, _ = predict_proba(counting, loader, "ten_crop", input_size=S)
    assert max(rows_run) == 3 and sum(rows_run) == 10 * 10
    np.testing.assert_allclose(capped, full, atol=1e-6)


@pytest.mark.parametrize("merge", MERGES)
def test_predict_modes_equals_separate_calls(merge):
    model, loader = make_model(), make_loader()
    modes = list(TTA_MODES)
    together, rows = predict_modes(model, loader, modes, merge, input_size=S, original_weight=0.3,
                                   max_batch_views=7)
    assert list(together) == modes
    for mode in modes:
        alone, rows_alone = predict_proba(model, loader, mode, merge, input_size=S, original_weight=0.3)
        np.testing.assert_allclose(together[mode], alone, atol=1e-6, err_msg=mode)
        np.testing.assert_array_equal(rows, rows_alone)


def test_predict_modes_reads_images_once_and_shares_views():
    model, loader = make_model(), make_loader()
    batches, rows_run = [], []
    counting = nn.Module()
    counting.forward = lambda x: (rows_run.append(x.shape[0]), model(x))[1]

    class Once:
        def __iter__(self):
            batches.append(1)
            return iter(loader)

    predict_modes(counting, Once(), ["none", "hflip", "vflip", "flip", "d4"], input_size=S)
    assert len(batches) == 1
    assert sum(rows_run) == 10 * 8  # all of them are views of d4


def test_crops_of_images_of_the_input_size_run_once():
    """R = S (crop_pct 1.0): every crop is the whole image, so ten_crop runs hflip's two views, not ten, and gives
    hflip's numbers (five_crop: none's); ten views are still run when the crops differ."""
    model = make_model()
    rows_run = []
    counting = nn.Module()
    counting.forward = lambda x: (rows_run.append(x.shape[0]), model(x))[1]
    modes = ["none", "hflip", "five_crop", "ten_crop"]
    p, _ = predict_modes(counting, make_loader(h=S, w=S), modes, input_size=S)
    assert sum(rows_run) == 10 * 2
    np.testing.assert_allclose(p["ten_crop"], p["hflip"], atol=1e-6)
    np.testing.assert_allclose(p["five_crop"], p["none"], atol=1e-6)
    rows_run.clear()
    predict_modes(counting, make_loader(), modes, input_size=S)  # 37 px images: real crops
    assert sum(rows_run) == 10 * 10


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("mode", ["hflip", "d4", "five_crop", "ten_crop_vflip", "multiscale"])
def test_original_weight_one_equals_none(mode, merge):
    model, loader = make_model(), make_loader()
    none, _ = predict_proba(model, loader, "none", merge, input_size=S)
    only_original, _ = predict_proba(model, loader, mode, merge, input_size=S, original_weight=1.0)
    np.testing.assert_allclose(only_original, none, atol=1e-6)


def test_original_weight_weights_the_centre_view():
    model, loader = make_model(), make_loader()
    p = {w: predict_proba(model, loader, "hflip", "mean", input_size=S, original_weight=w)[0] for w in (0.5, 0.8)}
    none, _ = predict_proba(model, loader, "none", input_size=S)
    uniform, _ = predict_proba(model, loader, "hflip", input_size=S)
    np.testing.assert_allclose(p[0.5], uniform, atol=1e-6)
    np.testing.assert_allclose(p[0.8], 0.8 * none + 0.2 * (2 * uniform - none), atol=1e-6)


def test_training_flag_restored_and_bfloat16_autocast():
    model, loader = make_model(), make_loader()
    model.train()
    ref, _ = predict_proba(model, loader, "hflip", input_size=S)
    assert model.training
    bf16, _ = predict_proba(model, loader, "hflip", input_size=S, amp_dtype=torch.bfloat16)
    assert_probabilities(bf16)
    np.testing.assert_allclose(bf16, ref, atol=0.05)


def test_errors_name_the_fix():
    model, loader = make_model(), make_loader()
    with pytest.raises(ValueError, match="valid: none, hflip"):
        predict_proba(model, loader, "tencrop", input_size=S)
    with pytest.raises(ValueError, match="valid: mean, gmean, tsharpen"):
        predict_proba(model, loader, "none", "max", input_size=S)
    with pytest.raises(ValueError, match="tta_resize"):
        predict_proba(model, make_loader(h=30, w=40), "none", input_size=S)
    with pytest.raises(ValueError, match="original_weight"):
        predict_proba(model, loader, "hflip", input_size=S, original_weight=1.5)
