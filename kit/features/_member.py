"""feature_extract members (kit.members.train_member): embeddings from the cache, a head fitted on them."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit import metrics as M
from kit.features._cache import cache_root, cached_embeddings, feature_views
from kit.features._heads import (HEAD_FILE, SklearnHead, create_head, fit_sklearn_head, fit_torch_head,
                                 install_head, logreg_as_linear, sklearn_proba)


def fit_feature_member(ctx, member, model: nn.Module, cfg: dict, out: Path, *, device, channels_last: bool,
                       on_epoch_end=None):
    """A feature_extract member: embeddings of the labelled images from the cache (extracted on a miss), the
    head fitted on the training rows and validated on the member's fold, installed into the model, saved as
    best.pt (+ head.pkl for scikit-learn heads). Returns (model, History); kit.members predicts with it."""
    from kit.models.backbone import CutBackbone, to_device
    from kit.rundir import atomic_save, write_bytes_atomic, write_csv_atomic, write_json_atomic
    from kit.runtime import resolve_amp
    from kit.train import History

    r, spec = member.recipe, member.recipe.model
    table, num_classes = ctx.sources.train, len(ctx.sources.train.classes)
    if spec.cut_at is not None and not isinstance(model, CutBackbone):
        model = to_device(CutBackbone(model, spec.cut_at, num_classes, spec.drop_rate), device, channels_last)
    views = feature_views(spec.head_views)
    emb = cached_embeddings(model, table, cfg, backbone=spec.backbone, weights=spec.weights, cut_at=spec.cut_at,
                            views=views, batch_size=r.train.batch_size * 2, num_workers=r.data.num_workers,
                            device=device, channels_last=channels_last, amp_dtype=resolve_amp(r.train.amp, device))
    train_rows, val_rows = np.flatnonzero(ctx.folds != member.fold), np.flatnonzero(ctx.folds == member.fold)
    x_train = np.concatenate([emb.views[v][train_rows] for v in views])  # views as extra rows
    y_train = np.tile(table.labels[train_rows], len(views))
    x_val, y_val = emb.views["none"][val_rows], table.labels[val_rows]
    t0 = time.perf_counter()
    if spec.head in ("linear", "mlp"):
        torch.manual_seed(r.train.seed)  # the head's initial weights follow the member's seed
        head = create_head(spec, x_train.shape[1], num_classes)
        history = fit_torch_head(head, x_train, y_train, x_val, y_val, r.train, device=device,
                                 on_epoch_end=on_epoch_end)
    else:
        pipeline = fit_sklearn_head(spec.head, spec.head_c, x_train, y_train)
        seconds = time.perf_counter() - t0
        scores = M.score_all(y_val, sklearn_proba(pipeline, x_val, num_classes))
        train_loss = M.score("log_loss", y_train, sklearn_proba(pipeline, x_train, num_classes))
        history = History([{"epoch": 0, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
                            "train_images_per_s": len(x_train) / seconds, "seconds": seconds}],
                          0, scores[r.train.metric])
        write_bytes_atomic(out / HEAD_FILE, pickle.dumps(pipeline))
        head = logreg_as_linear(pipeline, num_classes) if spec.head == "logreg" else SklearnHead(pipeline, num_classes)
        if on_epoch_end is not None:
            on_epoch_end(0, history.epochs[0])
    model = to_device(install_head(model, head), device, channels_last)
    atomic_save({"model": model.state_dict(), "epoch": history.best_epoch, "score": history.best_score},
                out / "best.pt")
    write_csv_atomic(out / "history.csv", history.epochs)
    write_json_atomic(out / "features.json", {
        "cache": str(cache_root()), "entries": emb.keys, "extracted": list(emb.computed),
        "embedding_seconds": emb.seconds, "head_seconds": time.perf_counter() - t0, "head": spec.head,
        "train_rows": len(x_train), "dim": int(x_train.shape[1])})
    return model, history
