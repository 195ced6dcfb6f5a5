"""Classify images with a pretrained ImageNet model as it is (1000 classes): a quick check of a backbone's weights."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import timm
import timm.data
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from kit.errors import ImageReadError, RecipeError
from kit.models.backbone import build_model, pretrained_overlay
from kit.recipe import ModelSpec

_BATCH = 16  # images per forward pass; 16 x 3 x 224 x 224 float32 = 9.6 MB of input


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file upright (EXIF orientation applied) as RGB; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {path}: {e}") from e


def _class_names(model: torch.nn.Module, model_name: str) -> list[str]:
    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        raise RecipeError(f"{model_name!r} is not an ImageNet classifier timm knows class names for "
                         f"(num_classes={getattr(model, 'num_classes', '?')}); pick an ImageNet-1k model")
    info = timm.data.ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


def classify_images(paths: Sequence[str | Path], model_name: str = "efficientnet_lite0", weights: str = "auto",
                    topk: int = 5) -> list[list[tuple[str, float]]]:
    """Top-`topk` (ImageNet class name, probability) per image, most probable first. The images go through
    what every kit prediction goes through: the eval transform of the model's own data config and
    kit.tta.predict_modes (mode none)."""
    import numpy as np
    from kit.data import ImageDataset, ImageTable, create_eval_transform, make_loader
    from kit.models.backbone import model_data_config
    from kit.tta import predict_modes
    if topk < 1:
        raise RecipeError(f"topk must be >= 1, but got topk={topk}")
    images = [np.asarray(open_rgb(p)) for p in paths]  # decode first: a bad file fails before the model is built
    spec = ModelSpec(backbone=model_name, weights=weights, strategy="full")
    model, _ = build_model(spec, None, pretrained_overlay(spec))  # the ImageNet head kept; data config carried
    model = model.eval().to(memory_format=torch.channels_last)
    cfg = model_data_config(model)
    names = _class_names(model, model_name)
    table = ImageTable(np.array([str(p) for p in paths]), images, None, tuple(names))
    loader = make_loader(ImageDataset(table, np.arange(len(images)), create_eval_transform(cfg)), _BATCH,
                         shuffle=False, num_workers=0, seed=0)
    probs, rows = predict_modes(model, loader, ["none"], input_size=cfg["input_size"], channels_last=True)
    probs = torch.from_numpy(probs["none"][np.argsort(rows)])
    values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def format_topk(paths: Sequence[str | Path], results: list[list[tuple[str, float]]]) -> list[str]:
    """Printable lines: each path, then its classes as '  1.  40.4%  tabby, tabby cat'."""
    lines = []
    for path, top in zip(paths, results):
        lines.append(str(path))
        lines += [f"  {rank}. {100 * p:5.1f}%  {name}" for rank, (name, p) in enumerate(top, start=1)]
    return lines
