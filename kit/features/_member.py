"""feature_extract members (kit.member_train.train_member): embeddings from the cache, a head fitted on them."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit import metrics as M
from kit.task import activate, train_targets
from kit.features._cache import cache_root, cached_embeddings, feature_views
from kit.features._heads import (HEAD_FILE, SklearnHead, calibration_split, create_head, fit_sklearn_head,
                                 fit_linear_head, fit_temperature, fit_torch_head, fitted_c, head_proba, install_head,
                                 logreg_as_linear, save_sklearn_head, sklearn_proba)

HEAD_TRAINING_DIR = "head_training"  # a torch head's last.pt / best.pt while it trains (resumable); removed after


def fit_feature_member(ctx, member, model: nn.Module, cfg: dict, out: Path, *, device, channels_last: bool,
                       on_epoch_end=None):
    """A feature_extract member: embeddings of the labelled images from the cache (extracted on a miss), the
    head fitted and calibrated on the training rows and validated on the member's fold, installed into the
    model, saved as best.pt (+ HEAD_FILE for an svm head). Returns (model, History); kit.member_predict predicts with it."""
    from kit.models.backbone import CutBackbone, to_device
    from kit.rundir import atomic_save, write_csv_atomic, write_json_atomic
    from kit.runtime import resolve_amp

    r, spec = member.recipe, member.recipe.model
    table = ctx.sources.train
    if spec.cut_at is not None and not isinstance(model, CutBackbone):
        model = to_device(CutBackbone(model, spec.cut_at, ctx.task.n_outputs, spec.drop_rate), device, channels_last)
    views = feature_views(spec.head_views)
    emb = cached_embeddings(model, table, cfg, backbone=spec.backbone, weights=spec.weights, cut_at=spec.cut_at,
                            views=views, batch_size=r.train.batch_size * 2, num_workers=r.data.num_workers,
                            device=device, channels_last=channels_last, amp_dtype=resolve_amp(r.train.amp, device))
    train_rows, val_rows = np.flatnonzero(ctx.folds != member.fold), np.flatnonzero(ctx.folds == member.fold)
    t0 = time.perf_counter()
    fit_head = _fit_torch if spec.head in ("linear", "mlp") else _fit_sklearn
    head, history, info = fit_head(member, emb, views, table, train_rows, val_rows, out, device, on_epoch_end,
                                   ctx.task)
    model = to_device(install_head(model, head), device, channels_last)
    atomic_save({"model": model.state_dict(), "epoch": history.best_epoch, "score": history.best_score},
                out / "best.pt")
    write_csv_atomic(out / "history.csv", history.epochs)
    write_json_atomic(out / "features.json", {
        "cache": str(cache_root()), "entries": emb.keys, "extracted": list(emb.computed),
        "embedding_seconds": emb.seconds, "head_seconds": time.perf_counter() - t0, "head": spec.head,
        "dim": int(emb.views["none"].shape[1]), **info})
    shutil.rmtree(out / HEAD_TRAINING_DIR, ignore_errors=True)  # best.pt holds the head now
    return model, history


def _rows(emb, views, rows) -> np.ndarray:
    return np.concatenate([emb.views[v][rows] for v in views])  # views as extra rows


def _tile(labels, n: int) -> np.ndarray:
    """Targets of rows repeated once per view (views are extra rows)."""
    return np.concatenate([labels] * n) if n > 1 else np.asarray(labels)


def _fit_torch(member, emb, views, table, train_rows, val_rows, out, device, on_epoch_end, task):
    """A linear / MLP head through kit.train.fit on most training images, its temperature fitted on the rest (one
    class per image; other tasks: every training image, the task's loss, no temperature)."""
    r, spec = member.recipe, member.recipe.model
    if not task.softmax:
        x_train = _rows(emb, views, train_rows)
        y_train = train_targets(task, _tile(table.labels[train_rows], len(views)))
        torch.manual_seed(r.train.seed)
        head = create_head(spec, x_train.shape[1], task.n_outputs)
        history = fit_torch_head(head, x_train, y_train, emb.views["none"][val_rows], table.labels[val_rows],
                                 r.train, out / HEAD_TRAINING_DIR, model_spec=spec, device=device, resume=True,
                                 on_epoch_end=on_epoch_end, task=task)
        return head, history, {"train_rows": len(x_train), "calibration_images": 0}
    fit_pos, cal_pos = calibration_split(table.labels[train_rows], r.train.seed)
    fit_rows, cal_rows = train_rows[fit_pos], train_rows[cal_pos]
    x_train, y_train = _rows(emb, views, fit_rows), np.tile(table.labels[fit_rows], len(views))
    x_val, y_val = emb.views["none"][val_rows], table.labels[val_rows]
    torch.manual_seed(r.train.seed)  # the head's initial weights follow the member's seed
    head = create_head(spec, x_train.shape[1], len(table.classes))
    history = fit_torch_head(head, x_train, y_train, x_val, y_val, r.train, out / HEAD_TRAINING_DIR,
                             model_spec=spec, device=device, resume=True, on_epoch_end=on_epoch_end)
    x_val_t = torch.as_tensor(np.asarray(x_val, dtype=np.float32), device=torch.device(device))
    before = M.score("log_loss", y_val, head_proba(head, x_val_t))
    temperature = fit_temperature(head, emb.views["none"][cal_rows], table.labels[cal_rows])
    after = M.score("log_loss", y_val, head_proba(head, x_val_t))
    return head, history, {"train_rows": len(x_train), "calibration_images": len(cal_rows),
                           "temperature": temperature, "val_log_loss_uncalibrated": before,
                           "val_log_loss_calibrated": after}


def _fit_sklearn(member, emb, views, table, train_rows, val_rows, out, device, on_epoch_end, task):
    """logreg (installed as one nn.Linear) or svm (a SklearnHead, saved as HEAD_FILE), C by inner CV; other tasks:
    per-label logistic regressions or a ridge regression at model.head_c (kit.features.fit_linear_head)."""
    from kit.train import History
    r, spec = member.recipe, member.recipe.model
    if not task.softmax:
        t0 = time.perf_counter()
        x_train = _rows(emb, views, train_rows)
        head = fit_linear_head(task, spec.head_c, x_train, _tile(table.labels[train_rows], len(views)))
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            p = activate(task, head(torch.as_tensor(np.asarray(emb.views["none"][val_rows], dtype=np.float32))))
        scores = M.score_all(table.labels[val_rows], p.numpy(), task.metrics)
        history = History([{"epoch": 0, "train_loss": float("nan"), **{f"val_{k}": v for k, v in scores.items()},
                            "train_images_per_s": len(x_train) / seconds, "seconds": seconds}],
                          0, scores[r.train.metric])
        if on_epoch_end is not None:
            on_epoch_end(0, history.epochs[0])
        return head, history, {"train_rows": len(x_train), "calibration_images": 0, "head_c": spec.head_c}
    num_classes = len(table.classes)
    x_train, y_train = _rows(emb, views, train_rows), np.tile(table.labels[train_rows], len(views))
    x_val, y_val = emb.views["none"][val_rows], table.labels[val_rows]
    t0 = time.perf_counter()
    groups = np.tile(np.arange(len(train_rows)), len(views))  # an image's views stay in one inner fold
    pipeline = fit_sklearn_head(spec.head, spec.head_c, x_train, y_train, groups=groups, seed=r.train.seed)
    seconds = time.perf_counter() - t0
    scores = M.score_all(y_val, sklearn_proba(pipeline, x_val, num_classes))
    train_loss = M.score("log_loss", y_train, sklearn_proba(pipeline, x_train, num_classes))
    history = History([{"epoch": 0, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
                        "train_images_per_s": len(x_train) / seconds, "seconds": seconds}],
                      0, scores[r.train.metric])
    if spec.head == "svm":
        save_sklearn_head(pipeline, out / HEAD_FILE)
        head = SklearnHead(pipeline, num_classes)
    else:
        head = logreg_as_linear(pipeline, num_classes)
    if on_epoch_end is not None:
        on_epoch_end(0, history.epochs[0])
    return head, history, {"train_rows": len(x_train), "calibration_images": 0, "head_c": fitted_c(pipeline)}
