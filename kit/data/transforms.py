"""albumentations pipelines derived from the backbone, as timm does: the model decides input size and
normalisation, the recipe (augment.*) decides the augmentations.

    cfg = model_data_config(model)                          # kit.models.backbone: input_size S, mean, std, ...
    train_tf = create_train_transform(recipe.augment, cfg)  # recipe list -> S x S -> normalise -> tensor
    eval_tf = create_eval_transform(cfg)                    # shorter side to S / crop_pct -> centre S x S
"""
from __future__ import annotations

import cv2
import albumentations as A
from albumentations.pytorch import ToTensorV2

from kit.errors import RecipeError
from kit.recipe import AugmentSpec, usable_transform

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
# Transforms that change the image size to something that depends on the input; after one of these the
# image is no longer known to be S x S.
_SIZE_CHANGING = ("SmallestMaxSize", "LongestMaxSize", "PadIfNeeded", "RandomScale", "CropAndPad",
                  "CropNonEmptyMaskIfExists", "RandomCropFromBorders", "Crop", "RandomCropNearBBox",
                  "BBoxSafeRandomCrop", "RandomSizedBBoxSafeCrop", "AtLeastOneBBoxRandomCrop")


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


def check_augment(spec: AugmentSpec, size: int, source: str) -> None:
    """Every augment.train item built as training builds it (build_transform, strict) at the model's input size
    `size`, so the check and the run cannot disagree; a RecipeError names the key, the parameter and the fix."""
    import difflib
    import inspect
    for i, item in enumerate(spec.train):
        (name, params), = item.items()
        key = f"augment.train[{i}].{name}"
        if not usable_transform(A, name):
            raise RecipeError(f"recipe key '{key}' in {source}: not an albumentations transform")
        try:
            build_transform(i, item, size)
        except ValueError as e:
            cls = getattr(A, name)
            valid = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            unknown = [p for p in (params or {}) if p not in valid and p != "strict"]
            if unknown:
                hints = [f"'{u}' (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(str(u), valid, n=1))
                         else f"'{u}'" for u in unknown]
                why = f"unknown parameter {', '.join(hints)}; parameters of {name}: {', '.join(valid)}"
            else:
                why = f"invalid parameters {params}: {_transform_error(e)}"
            raise RecipeError(f"recipe key '{key}' in {source}: {why}") from None


def _transform_error(e: ValueError) -> str:
    """albumentations' pydantic error (kept as build_transform's __context__) in one line, by parameter."""
    from pydantic import ValidationError
    inner = e.__context__
    while inner is not None and not isinstance(inner, ValidationError) and inner.__context__ is not None:
        inner = inner.__context__  # albumentations re-raises pydantic's error as a ValueError
    if isinstance(inner, ValidationError):
        by_param: dict[str, list[str]] = {}
        for err in inner.errors():
            name = f"{err['loc'][0]}" if err["loc"] else "parameters"
            got = repr(err.get("input"))
            by_param.setdefault(name, [f"got {got if len(got) <= 80 else got[:77] + '...'}"]).append(err["msg"])
        return "; ".join(f"{k}: {' or '.join(dict.fromkeys(v[1:]))} ({v[0]})" for k, v in by_param.items())
    return " ".join(str(inner or e).split())


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
