"""Test-time augmentation: views built from ttach transforms, run as one batched forward pass, merged as probabilities.

The loader hands over every image resized (shorter side R) and centre-cropped to R x R; each mode takes S x S
views out of it, S being the model's input size. With R = S / crop_pct (224 / 0.875 = 256) `ten_crop` is the
standard 10-crop protocol: 4 corners + centre, and their mirror images.

ttach's wrapper runs one forward pass per view (10 passes of B images for ten_crop). Here the views of a batch are
stacked along the batch dimension and run in chunks of at most `max_batch_views` rows (10 x 16 images = 160 rows:
one pass on a GPU; on the CPU smaller chunks are faster, see CPU_CHUNK_PIXELS), views of different sizes
(multiscale) in separate groups, so the rows a pass holds no longer depend on the loader's batch size.
Softmax comes first and the merge works on probabilities: on raw logits ttach's gmean and tsharpen take roots
of negative numbers and give NaN.

Each view is keyed by what it does to the image, so modes computed together (`predict_modes`) run a shared view
once: `none` is the first view of `hflip`, and `flip`, `hflip` and `vflip` are all inside `d4`. When R = S
(crop_pct 1.0, no tta.resize) every crop is the whole image: ten_crop's views are then hflip's two, run once each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import ttach
from ttach import aliases
from ttach import functional as TF
from ttach import transforms as T
from ttach.base import ImageOnlyTransform, Merger

from kit.recipe import TTA_DEFAULT_SCALES as DEFAULT_SCALES, TTA_MERGES as MERGES, TTA_MODES
from kit.runtime import OUT_OF_MEMORY, halve_after_oom
from kit.task import view_scores
# On the CPU a forward pass gains nothing from rows beyond what fills the cores, and loses to memory: glibc hands
# blocks over 32 MB back to the OS when they are freed, so a pass whose activations pass that size page-faults
# them in again, every pass (efficientnet_lite0 expands to 96 x 112 x 112 floats = 4.8 MB a row at 224 px).
# Measured, ten_crop of efficientnet_lite0 on 2 cores, images/s by rows a pass: 1: 7.5, 2: 9.8, 4: 11.2, 8: 8.5,
# 16: 8.0, 160: 4.6; measured again with benchmarks/bench_tta.py on 2026-12-01 (load average 1.3): 4 rows 12.8,
# 16 rows 9.5, 160 rows 4.8, ttach sequential 9.3. So chunks on the CPU hold at most 4 x 224 x 224 pixels (16 rows
# at 112 px). The value a run uses is fixed in its plan (environment.tta_cpu_chunk_pixels): the rows of a pass
# can change float sums.
CPU_CHUNK_PIXELS = 4 * 224 * 224


class CenterCrop(ImageOnlyTransform):
    """The centre crop_height x crop_width window as a ttach transform (ttach ships FiveCrops, no single crop).

    One parameter, so composing it multiplies no views; it calls ttach's own `center_crop`, so its pixels are
    those of the centre view of `FiveCrops` (for odd differences, e.g. 37 -> 32, both start at row 2).
    """

    def __init__(self, crop_height: int, crop_width: int):
        self.identity_param = (crop_height, crop_width)
        super().__init__("size", [(crop_height, crop_width)])

    def apply_aug_image(self, image, size=None, **kwargs):
        return TF.center_crop(image, *size)


def tta_resize(input_size: int, crop_pct: float, resize: int | None = None) -> int:
    """Side R of the square the views are cut from: `resize` (recipe tta.resize) or round(S / crop_pct).

    224 / 0.875 = 256. (timm's own eval transform floors instead: 224 / 0.9 gives 249 here, 248 in timm.)
    """
    if resize is None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}; timm models carry it in pretrained_cfg")
        resize = round(input_size / crop_pct)
    if resize < input_size:
        raise ValueError(f"tta.resize={resize} is smaller than the input size {input_size}: "
                         f"{input_size}x{input_size} crops need a resize of at least {input_size}")
    return int(resize)


def _check_mode(mode: str) -> None:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; valid: {', '.join(TTA_MODES)}")


def _check_merge(merge: str) -> None:
    if merge not in MERGES:
        raise ValueError(f"unknown TTA merge {merge!r}; valid: {', '.join(MERGES)}")


def tta_transforms(mode: str, input_size: int, scales=DEFAULT_SCALES) -> ttach.Compose:
    """The views of `mode` as a ttach Compose, applied to the R x R images the loader yields.

    Every mode applies, in this order: a crop, a scale, hflip, vflip, rot90 (`_view_key` relies on the order).
    multiscale rescales the S x S centre crop by each factor (bilinear; ttach adds the factor 1 if missing),
    so the model must accept other sizes, as timm models with global pooling do.
    """
    _check_mode(mode)
    s = int(input_size)
    center = [CenterCrop(s, s)]
    five = [T.FiveCrops(s, s)]
    build = {
        "none": lambda: center,
        "hflip": lambda: center + aliases.hflip_transform().aug_transforms,
        "vflip": lambda: center + aliases.vlip_transform().aug_transforms,  # sic: ttach's name
        "flip": lambda: center + aliases.flip_transform().aug_transforms,
        "d4": lambda: center + aliases.d4_transform().aug_transforms,  # hflip x rot 0/90/180/270
        "five_crop": lambda: aliases.five_crop_transform(s, s).aug_transforms,
        # ttach's ten_crop alias flips the R x R image before cropping: the same 10 views, flipping 30% more pixels.
        "ten_crop": lambda: five + [T.HorizontalFlip()],
        "ten_crop_vflip": lambda: five + [T.HorizontalFlip(), T.VerticalFlip()],
        "multiscale": lambda: center + [T.Scale(list(scales), interpolation="bilinear", align_corners=False),
                                        T.HorizontalFlip()],
    }
    return ttach.Compose(build[mode]())


def n_views(mode: str, scales=DEFAULT_SCALES) -> int:
    """How many views `mode` runs per image (multiscale with the default 3 scales: 3 x 2 = 6)."""
    return len(tta_transforms(mode, 1, scales))


def n_distinct_views(modes, scales=DEFAULT_SCALES, full_frame: bool = False) -> int:
    """Forward passes per image when `modes` are predicted together (shared views run once). full_frame: the
    views are cut from images of the input size itself (crop_pct 1.0), where every crop is the whole image."""
    return len(_plan(list(dict.fromkeys(modes)), 8, scales, full_frame).views)


# A view in canonical form: (crop, scale, hflip, rotation in degrees). vflip is folded in, being
# hflip followed by a 180-degree rotation, so flip's (h, v) = (1, 1) view is d4's (h, rot) = (0, 180).
_ORIGINAL = ("center_crop", 1.0, False, 0)
_STEP = {CenterCrop: 0, T.FiveCrops: 0, T.Scale: 1, T.HorizontalFlip: 2, T.VerticalFlip: 3, T.Rotate90: 4}


def _view_key(transforms, params, full_frame: bool = False) -> tuple:
    """The view's canonical form; full_frame: crops of the image's own size are the image (the centre crop)."""
    crop, scale, hflip, vflip, angle, last = "center_crop", 1.0, False, False, 0, -1
    for t, p in zip(transforms, params):
        step = _STEP.get(type(t))
        if step is None or step <= last:
            raise TypeError(f"views must apply crop, scale, hflip, vflip, rot90 in this order; got {transforms}")
        last = step
        if isinstance(t, CenterCrop):
            crop = "center_crop"
        elif isinstance(t, T.FiveCrops):
            crop = "center_crop" if full_frame else p.func.__name__  # crop_lt, crop_lb, crop_rb, crop_rt, center_crop
        elif isinstance(t, T.Scale):
            scale = float(p)
        elif isinstance(t, T.HorizontalFlip):
            hflip = bool(p)
        elif isinstance(t, T.VerticalFlip):
            vflip = bool(p)
        else:
            angle = int(p) % 360
    if vflip:
        hflip, angle = not hflip, (angle + 180) % 360
    return crop, scale, hflip, angle


@dataclass(frozen=True)
class _Plan:
    views: list  # ttach Transformers, one per distinct view of all the modes
    modes: dict  # mode -> indices into views, in ttach's view order
    original: dict  # mode -> position of the un-augmented (centre crop) view among the mode's views


def _plan(modes, input_size: int, scales, full_frame: bool = False) -> _Plan:
    """The distinct views of `modes`, and each mode's rows among them. full_frame (images of the input size: crop_pct
    1.0): five_crop's and ten_crop's crops are all the whole image, so they run once, as `none` and `hflip` do; a
    mode still merges its ten rows (the same numbers as ten passes)."""
    views, index, per_mode, original = [], {}, {}, {}
    for mode in modes:
        compose = tta_transforms(mode, input_size, scales)
        rows = []
        for params, transformer in zip(compose.aug_transform_parameters, compose):
            key = _view_key(compose.aug_transforms, params, full_frame)
            if key not in index:
                index[key] = len(views)
                views.append(transformer)
            rows.append(index[key])
        per_mode[mode] = rows
        original[mode] = rows.index(index[_ORIGINAL])
    return _Plan(views, per_mode, original)


def _view_weights(n: int, original: int, original_weight: float | None) -> torch.Tensor | None:
    """w for the un-augmented view, (1 - w) / (n - 1) for each other one; None: equal weights."""
    if original_weight is None or n == 1:
        return None
    w = torch.full((n,), (1.0 - original_weight) / (n - 1), dtype=torch.float32)
    w[original] = original_weight
    return w


def merge_views(log_probs: torch.Tensor, merge: str = "mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-view log-probabilities [V, B, C] -> probabilities [B, C], rows summing to 1.

    mean and tsharpen (mean of p ** 0.5) go through ttach's Merger when the views weigh the same. gmean is
    taken in log space: ttach multiplies the probabilities, and 20 views of 1e-3 make 1e-60, below float32's
    1e-45, so a row whose views disagree strongly becomes 0 / 0 = NaN when renormalised.
    """
    _check_merge(merge)
    n = log_probs.shape[0]
    if merge == "gmean":
        w = torch.full((n,), 1.0 / n) if weights is None else weights
        return torch.softmax(torch.einsum("v,vbc->bc", w.to(log_probs), log_probs), dim=-1)
    probs = log_probs.exp()
    if weights is None:
        merger = Merger(merge, n=n)
        for p in probs:
            merger.append(p)
        merged = merger.result
    else:
        merged = torch.einsum("v,vbc->bc", weights.to(probs), probs.sqrt() if merge == "tsharpen" else probs)
    return merged / merged.sum(dim=-1, keepdim=True)


def _mean_views(scores: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-view scores [V, B, K] that are not one distribution a row (0/1 and label probabilities, grades,
    values) -> their (weighted) mean [B, K]."""
    if weights is None:
        return scores.mean(dim=0)
    return torch.einsum("v,vbc->bc", weights.to(scores), scores)


def _shape_groups(views, images: torch.Tensor) -> dict:
    """Output shape (C, h, w) -> indices of the views that make it; the shape is read off one image."""
    groups = {}
    for u, view in enumerate(views):
        groups.setdefault(tuple(view.augment_image(images[:1]).shape[1:]), []).append(u)
    return groups


def _views_log_probs(model, images, views, groups, max_rows, channels_last, amp_dtype,
                     cpu_chunk_pixels: int | None = None, log=None, task=None) -> tuple[torch.Tensor, int]:
    """log-softmax of the model on every view of every image (with a task: kit.task.view_scores, the space its
    views merge in): ([U, B, C] float32, the rows a pass may hold now).

    Rows are view-major (view 0 of images 0..B-1, view 1 ...); a chunk of max_rows rows (on the CPU no more than
    CPU_CHUNK_PIXELS) may hold the tail of one view and the head of the next. Each chunk is copied once, into a
    buffer already in the input memory format. Out of memory halves max_rows and redoes that chunk (said through
    `log`, or a RuntimeWarning); the caller keeps the smaller value for its next batches.
    """
    b = images.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = None
    for shape, us in groups.items():
        total, start = len(us) * b, 0
        while start < total:
            rows = max_rows
            if images.device.type == "cpu":
                cap = CPU_CHUNK_PIXELS if cpu_chunk_pixels is None else cpu_chunk_pixels
                rows = min(rows, max(1, cap // (shape[-2] * shape[-1])))
            stop = min(start + rows, total)
            chunk = torch.empty((stop - start, *shape), dtype=images.dtype, device=images.device, memory_format=fmt)
            spans = []
            for j in range(start // b, (stop - 1) // b + 1):
                b0, b1 = max(start - j * b, 0), min(stop - j * b, b)
                row = j * b + b0 - start
                chunk[row:row + b1 - b0].copy_(views[us[j]].augment_image(images[b0:b1]))
                spans.append((us[j], b0, b1, row))
            try:
                with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(chunk)
            except OUT_OF_MEMORY:
                logits = None  # handled below, outside the except block, so that the failed pass can be freed
            if logits is None:
                del chunk
                max_rows = halve_after_oom(stop - start, images.device, "predicting views,", log)
                continue
            logp = torch.log_softmax(logits.float(), dim=-1) if task is None else view_scores(task, logits)
            if out is None:
                out = logp.new_empty((len(views), b, logp.shape[-1]))
            for u, b0, b1, row in spans:
                out[u, b0:b1] = logp[row:row + b1 - b0]
            start = stop
    return out, max_rows


def predict_modes(model, loader, modes, merge: str = "mean", *, input_size: int, device="cpu",
                  amp_dtype: torch.dtype | None = None, channels_last: bool = True, max_batch_views: int = 256,
                  original_weight: float | None = None, scales=DEFAULT_SCALES,
                  cpu_chunk_pixels: int | None = None, log=None, task=None) -> tuple[dict, np.ndarray]:
    """({mode: probs float32 [N, C]}, row_index int64 [N]) in loader order, reading the images once; `task`
    (kit.task.Task; default: softmax classes) says what the outputs are and the space views merge in.

    `loader` yields (images [B, 3, R_h, R_w] with R_h, R_w >= input_size, labels, row_index [B]). The model
    returns logits, runs in eval mode (its training flag is restored after) and should already be on `device`
    (and in channels_last, for speed, when the inputs are). amp_dtype: autocast dtype, e.g. torch.bfloat16 on CUDA.
    max_batch_views: rows (images x views) per forward pass; on the CPU also at most `cpu_chunk_pixels` pixels
    (default CPU_CHUNK_PIXELS; a run passes its plan's value, since the rows of a pass can change float sums).
    Out of memory halves the rows of a pass for the rest of the call, said through `log` (default: a warning).
    """
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ValueError(f"at least one TTA mode is needed; valid: {', '.join(TTA_MODES)}")
    for mode in modes:
        _check_mode(mode)
    _check_merge(merge)
    if max_batch_views < 1:
        raise ValueError(f"max_batch_views must be >= 1, got {max_batch_views}")
    if original_weight is not None and not 0 <= original_weight <= 1:
        raise ValueError(f"original_weight must be in [0, 1], got {original_weight}")
    plans = {full: _plan(modes, input_size, scales, full) for full in (False, True)}
    weights = {full: {m: _view_weights(len(rows), p.original[m], original_weight) for m, rows in p.modes.items()}
               for full, p in plans.items()}
    device = torch.device(device)
    probs, index, groups = {m: [] for m in modes}, [], {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, _, rows in loader:
                images = images.to(device, non_blocking=True)
                h, w = images.shape[-2:]
                if min(h, w) < input_size:
                    raise ValueError(f"images are {h}x{w}, smaller than the {input_size}x{input_size} views; the "
                                     f"loader must resize them to tta_resize(input_size, crop_pct, tta.resize)")
                full = h == w == input_size  # every crop is the whole image
                plan = plans[full]
                if (h, w) not in groups:
                    groups[(h, w)] = _shape_groups(plan.views, images)
                logp, max_batch_views = _views_log_probs(model, images, plan.views, groups[(h, w)], max_batch_views,
                                                         channels_last, amp_dtype, cpu_chunk_pixels, log, task)
                for mode, view_rows in plan.modes.items():
                    merged = merge_views(logp[view_rows], merge, weights[full][mode]) if task is None or task.softmax \
                        else _mean_views(logp[view_rows], weights[full][mode])
                    probs[mode].append(merged.cpu())
                index.append(torch.as_tensor(rows).cpu())
    finally:
        model.train(was_training)
    if not index:
        raise ValueError("the loader yielded no batches")
    out = {m: torch.cat(p).numpy().astype(np.float32, copy=False) for m, p in probs.items()}
    return out, torch.cat(index).numpy().astype(np.int64, copy=False)


def predict_proba(model, loader, mode: str = "none", merge: str = "mean", *, input_size: int, device="cpu",
                  amp_dtype: torch.dtype | None = None, channels_last: bool = True, max_batch_views: int = 256,
                  original_weight: float | None = None, scales=DEFAULT_SCALES) -> tuple[np.ndarray, np.ndarray]:
    """(probs float32 [N, C], row_index int64 [N]) of one TTA mode, in loader order; see `predict_modes`."""
    probs, index = predict_modes(model, loader, [mode], merge, input_size=input_size, device=device,
                                 amp_dtype=amp_dtype, channels_last=channels_last, max_batch_views=max_batch_views,
                                 original_weight=original_weight, scales=scales)
    return probs[mode], index
