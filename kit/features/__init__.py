"""Feature extraction: the frozen backbone runs once per image set, its embeddings wait on disk, and shallow
heads (torch linear / MLP, scikit-learn logistic regression / SVM) train on them in seconds.

    emb = cached_embeddings(model, table, cfg, backbone=..., weights=..., cut_at=...)  # .views: {view: [N, D]}
    history = fit_torch_head(head := create_head(spec, D, C), x, y, x_val, y_val, recipe.train)
    model = install_head(model, head)   # backbone + head: predicts images (and TTA views) like any member

The cache: one folder per (backbone, weights, cut_at, eval transform, image set, view, precision) under
$KIT_CACHE_DIR/embeddings (default ~/.cache/kit/embeddings), named by the sha256 of those. An entry is
written in a `.tmp-*` folder (rows streamed to embeddings.npy batch by batch, so memory stays flat as the
image count grows; the `complete` marker last) and renamed into place: an interrupted extraction leaves only
the `.tmp-*` folder, which is never read.
"""
from __future__ import annotations

from kit.features._cache import (CACHE_FORMAT, TRANSFORM_KEYS, VIEWS, ZOOM, CachedEmbeddings, cache_root,
                                 cached_embeddings, describe_weights, embedding_key, feature_views,
                                 image_set_digest, kit_cache_dir, pooled_features, read_entry, view_batch)
from kit.features._heads import (HEAD_FILE, MISSING_LOGIT, SklearnHead, create_head, fit_sklearn_head,
                                 fit_torch_head, head_proba, install_head, logreg_as_linear, restore_member_model,
                                 sklearn_proba, train_epoch)
from kit.features._member import fit_feature_member

__all__ = [
    "CACHE_FORMAT", "TRANSFORM_KEYS", "VIEWS", "ZOOM", "CachedEmbeddings", "cache_root", "cached_embeddings",
    "describe_weights", "embedding_key", "feature_views", "image_set_digest", "kit_cache_dir", "pooled_features",
    "read_entry", "view_batch",
    "HEAD_FILE", "MISSING_LOGIT", "SklearnHead", "create_head", "fit_sklearn_head", "fit_torch_head", "head_proba",
    "install_head", "logreg_as_linear", "restore_member_model", "sklearn_proba", "train_epoch",
    "fit_feature_member",
]
