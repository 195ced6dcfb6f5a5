"""Feature extraction: the frozen backbone runs once per image set, its embeddings wait on disk, and shallow
heads (torch linear / MLP, scikit-learn logistic regression / SVM) train on them in seconds.

    emb = cached_embeddings(model, table, cfg, backbone=..., weights=..., cut_at=...)  # .views: {view: [N, D]}
    history = fit_torch_head(head := create_head(spec, D, C), x, y, x_val, y_val, recipe.train, out_dir)
    fit_temperature(head, x_held_out, y_held_out)   # calibrated on training images the head did not train on
    model = install_head(model, head)   # backbone + head: predicts images (and TTA views) like any member

A torch head trains through kit.train.fit, the one training loop, fed by embedding_loader (a DataLoader over a
TensorDataset of (embedding, label, row), the batch contract of the image loaders).

The cache: one folder per (backbone, weights, cut_at, eval transform, image set, view, precision) under
$KIT_CACHE_DIR/embeddings (default ~/.cache/kit/embeddings), named by the sha256 of those. An entry is
written in a `.tmp-*` folder (rows streamed to embeddings.npy batch by batch, so memory stays flat as the
image count grows; the `complete` marker last) and renamed into place: an interrupted extraction leaves only
the `.tmp-*` folder, which is never read.
"""
from __future__ import annotations

from kit.features._cache import (CACHE_FORMAT, TRANSFORM_KEYS, VIEWS, ZOOM, CachedEmbeddings, cache_root,
                                 cached_embeddings, describe_weights, embedding_key, feature_views,
                                 image_set_digest, kit_cache_dir, model_digest, pooled_features, read_entry, view_batch)
from kit.features._heads import (C_GRID, CALIBRATION_FRACTION, HEAD_FILE, LEGACY_HEAD_FILE, MISSING_LOGIT,
                                 SKLEARN_TRUSTED, SklearnHead, calibration_split, choose_c, create_head,
                                 embedding_loader, embedding_scale, fit_sklearn_head, fit_temperature, fit_torch_head,
                                 fitted_c, head_proba, install_head, load_sklearn_head, logreg_as_linear,
                                 restore_member_model, save_sklearn_head, sklearn_proba)
from kit.features._member import fit_feature_member

__all__ = [
    "CACHE_FORMAT", "TRANSFORM_KEYS", "VIEWS", "ZOOM", "CachedEmbeddings", "cache_root", "cached_embeddings",
    "describe_weights", "embedding_key", "feature_views", "image_set_digest", "kit_cache_dir", "model_digest", "pooled_features",
    "read_entry", "view_batch",
    "C_GRID", "CALIBRATION_FRACTION", "HEAD_FILE", "LEGACY_HEAD_FILE", "MISSING_LOGIT", "SKLEARN_TRUSTED",
    "SklearnHead", "calibration_split", "choose_c", "create_head", "embedding_loader", "embedding_scale",
    "fit_sklearn_head", "fit_temperature", "fit_torch_head", "fitted_c", "head_proba", "install_head", "load_sklearn_head",
    "logreg_as_linear", "restore_member_model", "save_sklearn_head", "sklearn_proba",
    "fit_feature_member",
]
