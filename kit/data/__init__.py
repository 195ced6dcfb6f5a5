"""The data step: sources -> decoded images -> folds -> albumentations pipelines -> DataLoaders.

    sources = load_sources(recipe.data)                       # kit.data.sources
    folds = make_folds(sources.train.labels, recipe.data)     # kit.data.folds
    cfg = resolve_data_config(model, recipe.augment)          # kit.data.transforms
    ds = ImageDataset(sources.train, np.flatnonzero(folds != k), create_train_transform(recipe.augment, cfg))
    loader = make_loader(ds, batch_size, shuffle=True, num_workers=recipe.data.num_workers, seed=seed)

transforms (albumentations, cv2) and loader (torch) are imported on first use, so `import kit.data` stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kit.data.folds import ALWAYS_TRAIN, FoldError, fold_ids, load_folds, make_folds, save_folds
from kit.data.images import ImageReadError, load_item, read_image
from kit.data.sources import DataSourceError, ImageTable, Sources, load_sources, sort_classes

_LAZY = {
    "resolve_data_config": "kit.data.transforms", "create_train_transform": "kit.data.transforms",
    "create_eval_transform": "kit.data.transforms", "eval_resize": "kit.data.transforms",
    "ImageDataset": "kit.data.loader", "make_loader": "kit.data.loader",
}

if TYPE_CHECKING:
    from kit.data.loader import ImageDataset, make_loader
    from kit.data.transforms import create_eval_transform, create_train_transform, eval_resize, resolve_data_config


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kit.data' has no attribute {name!r}")


__all__ = ["ALWAYS_TRAIN", "DataSourceError", "FoldError", "ImageDataset", "ImageReadError", "ImageTable",
           "Sources", "create_eval_transform", "create_train_transform", "eval_resize", "fold_ids", "load_folds",
           "load_item", "load_sources", "make_folds", "make_loader", "read_image", "resolve_data_config",
           "save_folds", "sort_classes"]
