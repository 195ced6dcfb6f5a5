"""The data step: sources -> decoded images -> folds -> albumentations pipelines -> DataLoaders.

    sources = load_sources(recipe.data)                       # kit.data.sources (paths stay inside their root)
    bad = scan_sources(sources)                               # kit.data.scan: every file decoded once, cached
    sources = apply_bad_images(sources, bad, recipe.data.bad_images, where)   # fail: DataError; skip: rows dropped
    sources = attach_decoded_cache(sources, decoded_max_side(plan))           # kit.data.cache: decoded once, on disk
    folds = make_folds(sources.train.labels, recipe.data, sources.train.classes)   # kit.data.folds
    cfg = model_data_config(model)                            # kit.models.backbone: the model's own config
    ds = ImageDataset(sources.train, np.flatnonzero(folds != k), create_train_transform(recipe.augment, cfg))
    workers = choose_num_workers(ds, batch_size)              # data.num_workers: auto, measured once in the plan
    loader = make_loader(ds, batch_size, shuffle=True, num_workers=workers, seed=seed)
    loader.set_epoch(epoch)                                   # batches depend on (seed, epoch), not on workers

transforms (albumentations, cv2), loader (torch), cache and scan are imported on first use, so `import kit.data`
stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kit.data.folds import ALWAYS_TRAIN, FoldError, fold_ids, load_folds, make_folds, save_folds
from kit.data.images import ImageReadError, load_item, read_image, verify_image
from kit.data.sources import DataSourceError, ImageTable, Sources, load_sources, sort_classes

_LAZY = {
    "create_train_transform": "kit.data.transforms",
    "create_eval_transform": "kit.data.transforms", "eval_resize": "kit.data.transforms",
    "ImageDataset": "kit.data.loader", "make_loader": "kit.data.loader", "choose_num_workers": "kit.data.loader",
    "attach_decoded_cache": "kit.data.cache", "decoded_max_side": "kit.data.cache",
    "BadImage": "kit.data.scan", "scan_sources": "kit.data.scan", "apply_bad_images": "kit.data.scan",
}

if TYPE_CHECKING:
    from kit.data.cache import attach_decoded_cache, decoded_max_side
    from kit.data.loader import ImageDataset, choose_num_workers, make_loader
    from kit.data.scan import BadImage, apply_bad_images, scan_sources
    from kit.data.transforms import create_eval_transform, create_train_transform, eval_resize


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kit.data' has no attribute {name!r}")


__all__ = ["ALWAYS_TRAIN", "BadImage", "DataSourceError", "FoldError", "ImageDataset", "ImageReadError",
           "ImageTable", "Sources", "apply_bad_images", "attach_decoded_cache", "choose_num_workers",
           "create_eval_transform", "create_train_transform", "decoded_max_side", "eval_resize", "fold_ids",
           "load_folds", "load_item", "load_sources", "make_folds", "make_loader", "read_image",
           "save_folds", "scan_sources", "sort_classes", "verify_image"]
