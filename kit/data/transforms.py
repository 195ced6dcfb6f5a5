"""albumentations pipelines derived from the backbone, as timm does: the model decides input size and
normalisation, the recipe (augment.*) decides the augmentations.

    cfg = resolve_data_config(model, recipe.augment)        # input_size S, mean, std, crop_pct, interpolation
    train_tf = create_train_transform(recipe.augment, cfg)  # recipe list -> S x S -> normalise -> tensor
    eval_tf = create_eval_transform(cfg)                    # shorter side to S / crop_pct -> centre S x S
"""
from __future__ import annotations

import cv2
import albumentations as A
from albumentations.pytorch import ToTensorV2

from kit.recipe import AugmentSpec

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
# Transforms that change the image size to something that depends on the input; after one of these the
# image is no longer known to be S x S.
_SIZE_CHANGING = ("SmallestMaxSize", "LongestMaxSize", "PadIfNeeded", "RandomScale", "CropAndPad",
                  "CropNonEmptyMaskIfExists", "RandomCropFromBorders", "Crop", "RandomCropNearBBox",
                  "BBoxSafeRandomCrop", "RandomSizedBBoxSafeCrop", "AtLeastOneBBoxRandomCrop")


def resolve_data_config(model, spec: AugmentSpec, override: dict | None = None) -> dict:
    """{input_size: S, mean, std, crop_pct, interpolation}: the model's pretrained config, then `override`
    (e.g. the normalisation of offline weights), then augment.input_size / augment.crop_pct.

    `model` is a timm model, or a timm model name (its default pretrained config is read, nothing is built).
    """
    import timm

    if isinstance(model, str):
        pretrained = timm.models.get_pretrained_cfg(model)
        if pretrained is None:
            raise ValueError(f"{model!r} is not a timm model with a pretrained config; "
                             f"list them with timm.list_models('*pattern*')")
        raw = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict())
    else:
        raw = timm.data.resolve_model_data_config(model)
    raw = {**raw, **(override or {})}
    cfg = {"input_size": _side(raw["input_size"]), "mean": tuple(float(m) for m in raw["mean"]),
           "std": tuple(float(s) for s in raw["std"]), "crop_pct": float(raw.get("crop_pct") or 1.0),
           "interpolation": str(raw.get("interpolation") or "bilinear")}
    if spec.input_size is not None:
        cfg["input_size"] = spec.input_size
    if spec.crop_pct is not None:
        cfg["crop_pct"] = spec.crop_pct
    return cfg


def _side(input_size) -> int:
    # timm gives (C, H, W); kit works with square inputs, so a non-square pretrained size uses its larger side.
    if isinstance(input_size, int):
        return input_size
    return int(max(input_size[-2:]))


def cv2_interpolation(name: str) -> int:
    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; valid: {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def create_train_transform(spec: AugmentSpec, cfg: dict) -> A.Compose:
    """augment.train in order, then (unless it already ends S x S) shorter side to S and a centre S x S crop,
    then Normalize(cfg mean/std) and ToTensorV2. Randomness is seeded per worker by kit.data.loader."""
    size = cfg["input_size"]
    steps = [build_transform(i, item, size) for i, item in enumerate(spec.train)]
    if not _ends_square(steps, size):
        # Keep the aspect ratio (no squashing), as the eval pipeline does; only the centre loses its borders.
        interp = cv2_interpolation(cfg["interpolation"])
        steps += [A.SmallestMaxSize(max_size=size, interpolation=interp), A.CenterCrop(size, size)]
    return A.Compose(steps + _finish(cfg))


def build_transform(i: int, item: dict, size: int) -> A.BasicTransform:
    """One recipe item {ClassName: {params}} as an albumentations transform (augment.train[i])."""
    (name, params), = item.items()
    params = dict(params or {})
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"augment.train[{i}]: {name!r} is not an albumentations transform")
    if name in ("RandomResizedCrop", "RandomSizedCrop") and "size" not in params:
        params["size"] = (size, size)  # the backbone's input size
    try:
        # strict: an unknown parameter (a typo) fails instead of albumentations' warning and default value
        return cls(**{"strict": True, **params})
    except Exception as e:  # albumentations validates its arguments with pydantic
        raise ValueError(f"augment.train[{i}].{name}: invalid parameters {params}: {e}") from None


def _ends_square(steps, size: int) -> bool:
    """Whether the last size-setting step always yields size x size."""
    square = False
    for t in steps:
        out = _fixed_output(t)
        if out is not None:
            square = tuple(out) == (size, size) and t.p >= 1
        elif type(t).__name__ in _SIZE_CHANGING or getattr(t, "fit_output", False):
            square = False
    return square


def _fixed_output(t):
    if isinstance(getattr(t, "size", None), (tuple, list)) and len(t.size) == 2:
        return tuple(int(v) for v in t.size)
    h, w = getattr(t, "height", None), getattr(t, "width", None)
    if isinstance(h, int) and isinstance(w, int):
        return h, w
    return None


def _finish(cfg: dict) -> list:
    return [A.Normalize(mean=cfg["mean"], std=cfg["std"], max_pixel_value=255.0), ToTensorV2()]


def eval_resize(cfg: dict, resize: int | None = None) -> int:
    """Shorter side before the centre crop: `resize`, or S / crop_pct (224 / 0.875 = 256), at least S."""
    size = cfg["input_size"]
    if resize is not None:
        return int(resize)
    return max(size, int(round(size / cfg["crop_pct"])))


def create_eval_transform(cfg: dict, resize: int | None = None, crop: int | None = None) -> A.Compose:
    """Shorter side to R = eval_resize(cfg, resize), centre crop to `crop` (default S), normalise, tensor.
    crop=R keeps the whole R x R square, from which test-time augmentation takes its own crops."""
    r = eval_resize(cfg, resize)
    c = cfg["input_size"] if crop is None else int(crop)
    return A.Compose([A.SmallestMaxSize(max_size=r, interpolation=cv2_interpolation(cfg["interpolation"])),
                      A.CenterCrop(c, c, pad_if_needed=True)] + _finish(cfg))
