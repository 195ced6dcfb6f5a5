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

import functools
import hashlib
import json
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit import metrics as M
from kit.recipe import ModelSpec, RecipeError, TrainSpec

CACHE_FORMAT = 1  # bump when the entry layout or the meaning of a key part changes
TRANSFORM_KEYS = ("input_size", "crop_pct", "mean", "std", "interpolation")
# Fixed views of each training image cached as extra rows (model.head_views = how many, from the left).
VIEWS = ("none", "hflip", "zoom", "zoom_hflip")
ZOOM = 0.875  # `zoom`: the centre 87.5% of the eval crop, resized back to the input size
HEAD_FILE = "head.pkl"  # the fitted scikit-learn pipeline of a logreg / svm member, next to best.pt
MISSING_LOGIT = -1e4  # logreg: a class absent from the training rows gets probability exp(-1e4) = 0
_STALE_TMP_S = 24 * 3600  # `.tmp-*` folders older than a day are leftovers of killed extractions


# ---------------------------------------------------------------- cache keys

def kit_cache_dir() -> Path:
    """$KIT_CACHE_DIR or ~/.cache/kit: kit's caches (embeddings/, advice/, channels_last.json)."""
    return Path(os.environ.get("KIT_CACHE_DIR") or Path.home() / ".cache" / "kit")


def cache_root() -> Path:
    return kit_cache_dir() / "embeddings"


def _file_sha256(path) -> str:
    st = os.stat(path)
    return _sha256_of(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # once per version of a weights file (~0.1 s / 20 MB)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_weights(backbone: str, weights: str) -> str:
    """What the weights are, for the cache key: 'none', 'hub:<hf id>', 'offline:<sha256>', 'file:<sha256>'."""
    from kit.models.pretrained import offline_weights_file, resolve_weights
    source = resolve_weights(backbone, weights)
    if source == "none":
        return "none"
    if source == "hub":
        import timm
        cfg = timm.models.get_pretrained_cfg(backbone)
        return f"hub:{getattr(cfg, 'hf_hub_id', None) or backbone}"
    if source == "offline":
        return f"offline:{_file_sha256(offline_weights_file(backbone))}"
    return f"file:{_file_sha256(source)}"


def image_set_digest(table) -> str:
    """sha256 of the ids and images of a table: file path, size and mtime, or the bytes of in-memory arrays."""
    h = hashlib.sha256()
    for image_id, item in zip(table.ids, table.items):
        h.update(f"{image_id}\0".encode())
        if isinstance(item, np.ndarray):
            h.update(f"{item.shape}{item.dtype}\0".encode())
            h.update(np.ascontiguousarray(item).data)
        else:
            st = os.stat(item)
            h.update(f"{os.path.abspath(item)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()


def embedding_key(backbone: str, weights: str, cut_at: int | None, cfg: dict, images: str, view: str = "none",
                  precision: str = "float32") -> str:
    """The entry name: sha256 of everything the embeddings depend on (`weights` as `describe_weights` gives it,
    `images` as `image_set_digest` gives it, `cfg` the eval transform of kit.data.resolve_data_config)."""
    import timm
    parts = {"format": CACHE_FORMAT, "backbone": backbone, "weights": weights, "cut_at": cut_at,
             "transform": {k: cfg[k] for k in TRANSFORM_KEYS}, "images": images, "view": view,
             "precision": precision, "timm": timm.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def feature_views(head_views: int) -> tuple[str, ...]:
    if not 1 <= head_views <= len(VIEWS):
        raise RecipeError(f"model.head_views={head_views}: use 1..{len(VIEWS)} (views {', '.join(VIEWS)})")
    return VIEWS[:head_views]


# ---------------------------------------------------------------- extraction

@dataclass
class CachedEmbeddings:
    views: dict  # view -> float32 [N, D], memory-mapped from the cache, rows in table order
    keys: dict  # view -> entry name
    computed: tuple  # views extracted by this call (the others were cache hits)
    seconds: float


def read_entry(path: Path, n_rows: int | None = None) -> np.ndarray | None:
    """The embeddings of a complete entry (memory-mapped), or None: missing, unfinished or of another size."""
    if not (path / "complete").is_file():
        return None
    x = np.load(path / "embeddings.npy", mmap_mode="r")
    return x if n_rows is None or len(x) == n_rows else None


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: timm's forward_head(pre_logits=True), also on kit's CutBackbone."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def view_batch(x: torch.Tensor, view: str) -> torch.Tensor:
    if view.startswith("zoom"):
        s = x.shape[-1]
        c = int(round(s * ZOOM))
        top, left = (x.shape[-2] - c) // 2, (s - c) // 2
        x = nn.functional.interpolate(x[..., top:top + c, left:left + c], size=x.shape[-2:], mode="bilinear",
                                      align_corners=False)
    return x.flip(-1) if view.endswith("hflip") else x


def cached_embeddings(model: nn.Module, table, cfg: dict, *, backbone: str, weights: str, cut_at: int | None,
                      views=("none",), batch_size: int = 64, num_workers: int = 0, device="cpu",
                      channels_last: bool = False, amp_dtype=None, loader=None) -> CachedEmbeddings:
    """Embeddings of every image of `table` under the eval transform `cfg`, from the cache or extracted now
    (then stored). `model` must be the backbone the other arguments describe. `loader` (tests): yields
    (images, labels, rows) in table order instead of the default eval loader."""
    t0 = time.perf_counter()
    root = cache_root()
    precision = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"
    digest, described = image_set_digest(table), describe_weights(backbone, weights)
    keys = {v: embedding_key(backbone, described, cut_at, cfg, digest, v, precision) for v in views}
    found = {v: read_entry(root / k, len(table)) for v, k in keys.items()}
    missing = [v for v in views if found[v] is None]
    if missing:
        if loader is None:
            from kit.data import ImageDataset, create_eval_transform, make_loader
            loader = make_loader(ImageDataset(table, np.arange(len(table)), create_eval_transform(cfg)), batch_size,
                                 shuffle=False, num_workers=num_workers, seed=0)
        meta = {"backbone": backbone, "weights": described, "cut_at": cut_at, "images": digest, "n": len(table),
                "transform": {k: cfg[k] for k in TRANSFORM_KEYS}, "precision": precision}
        _extract(model, loader, len(table), {v: root / keys[v] for v in missing}, meta, torch.device(device),
                 channels_last, amp_dtype)
        found.update({v: read_entry(root / keys[v], len(table)) for v in missing})
    return CachedEmbeddings(found, keys, tuple(missing), time.perf_counter() - t0)


def _extract(model, loader, n: int, targets: dict, meta: dict, device, channels_last: bool, amp_dtype) -> None:
    """Stream the features of each view into its own `.tmp-*` folder, then rename the folders into place."""
    root = next(iter(targets.values())).parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmps = {v: Path(tempfile.mkdtemp(prefix=f".tmp-{p.name[:16]}-", dir=root)) for v, p in targets.items()}
    for tmp in tmps.values():
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared by the users of a machine
    files, written, seconds = {}, 0, time.perf_counter()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, _, rows in loader:
                rows = np.asarray(rows)
                if not np.array_equal(rows, np.arange(written, written + len(rows))):
                    raise RuntimeError(f"the extraction loader must yield rows in table order; got rows "
                                       f"{rows[:3].tolist()}... after {written} rows")
                x = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
                for view, tmp in tmps.items():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        feats = pooled_features(model, view_batch(x, view).contiguous(memory_format=fmt))
                    feats = feats.float().cpu().numpy()
                    if view not in files:  # the header needs the feature width: written with the first batch
                        files[view] = open(tmp / "embeddings.npy", "wb")
                        np.lib.format.write_array_header_1_0(files[view], {
                            "descr": "<f4", "fortran_order": False, "shape": (n, feats.shape[1])})
                    files[view].write(np.ascontiguousarray(feats, dtype="<f4").data)
                written += len(rows)
        if written != n:
            raise RuntimeError(f"the extraction loader yielded {written} rows, the table has {n}")
        seconds = time.perf_counter() - seconds
        for view, tmp in tmps.items():
            f = files.pop(view)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            (tmp / "meta.json").write_text(json.dumps({**meta, "view": view, "seconds": seconds}, indent=2))
            (tmp / "complete").write_text("")  # last: an entry without it is never read
            _publish(tmp, targets[view])
    finally:
        model.train(was_training)
        for f in files.values():
            f.close()
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished entry into place. Another process may have finished the same entry first: keep theirs."""
    if target.exists() and read_entry(target) is None:
        shutil.rmtree(target, ignore_errors=True)  # not a complete entry (copied by hand, older layout)
    try:
        os.rename(tmp, target)
    except OSError:
        if read_entry(target) is None:
            raise


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


# ---------------------------------------------------------------- heads

def create_head(spec: ModelSpec, num_features: int, num_classes: int) -> nn.Module:
    """model.head linear: one nn.Linear; mlp: Linear(D, head_hidden), GELU, Dropout(drop_rate), Linear(., C).
    The output layer starts small (std 0.01, as kit.models.backbone.init_head)."""
    from kit.models.backbone import init_head
    if spec.head == "linear":
        head = out = nn.Linear(num_features, num_classes)
    elif spec.head == "mlp":
        out = nn.Linear(spec.head_hidden, num_classes)
        head = nn.Sequential(nn.Linear(num_features, spec.head_hidden), nn.GELU(), nn.Dropout(spec.drop_rate), out)
    else:
        raise ValueError(f"model.head={spec.head!r} is not a torch head; torch heads: linear, mlp")
    init_head(out)
    return head


def _scheduler(optimizer, spec: TrainSpec, updates_per_epoch: int):
    """The recipe's schedule per update, as kit.train builds it for fine-tuning."""
    if spec.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=spec.epochs * updates_per_epoch,
            pct_start=min(0.5, max(spec.warmup_epochs / spec.epochs, 0.05)))
    if spec.scheduler == "cosine":
        from timm.scheduler import create_scheduler_v2
        return create_scheduler_v2(optimizer, sched="cosine", num_epochs=spec.epochs, warmup_epochs=spec.warmup_epochs,
                                   warmup_lr=spec.lr * 1e-3, min_lr=spec.lr * 1e-3, step_on_epochs=False,
                                   updates_per_epoch=updates_per_epoch)[0]
    return None


def train_epoch(head: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn, batch_size: int,
                generator: torch.Generator, scheduler=None, first_update: int = 0) -> float:
    """One pass over the embeddings in a random order (mini-batches); returns the mean training loss."""
    head.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total = 0.0
    for i, start in enumerate(range(0, len(x), batch_size)):
        idx = order[start:start + batch_size]
        loss = loss_fn(head(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            scheduler.step()
        elif scheduler is not None:
            scheduler.step_update(first_update + i + 1)
        total += loss.item() * len(idx)
    return total / len(x)


@torch.inference_mode()
def head_proba(head: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    head.eval()
    return torch.cat([torch.softmax(head(x[i:i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)]
                     ).cpu().numpy()


def fit_torch_head(head: nn.Module, x_train, y_train, x_val, y_val, spec: TrainSpec, *, device="cpu",
                   on_epoch_end=None):
    """Mini-batch training on standardised embeddings with the recipe's optimiser, schedule and label smoothing;
    validation every epoch, early stopping on train.metric (patience train.early_stopping). The head ends with
    its best epoch's weights, taking raw embeddings; returns the kit.train.History."""
    from timm.optim import create_optimizer_v2
    from kit.train import History

    device = torch.device(device)
    x = torch.as_tensor(np.asarray(x_train, dtype=np.float32), device=device)
    # Standardised inputs, as the scikit-learn heads get: pooled features have scales that differ by backbone
    # (and by layer, with cut_at), which an lr tuned for one would not fit. Folded into the first layer at the end.
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=device)
    xv = (torch.as_tensor(np.asarray(x_val, dtype=np.float32), device=device) - mean) / std
    y_val = np.asarray(y_val, dtype=np.int64)
    head.to(device)
    optimizer = create_optimizer_v2(head, opt=spec.optimizer, lr=spec.lr, weight_decay=spec.weight_decay,
                                    momentum=spec.momentum)
    updates = math.ceil(len(x) / spec.batch_size)
    scheduler = _scheduler(optimizer, spec, updates)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    generator = torch.Generator().manual_seed(spec.seed)
    history, best, patience = History(), None, spec.early_stopping or 0
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        loss = train_epoch(head, x, y, optimizer, loss_fn, spec.batch_size, generator, scheduler, epoch * updates)
        scores = M.score_all(y_val, head_proba(head, xv))
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in scores.items()},
               "lr": max(g["lr"] for g in optimizer.param_groups), "train_images_per_s": len(x) / seconds,
               "seconds": seconds}
        history.epochs.append(row)
        score = scores[spec.metric]
        if math.isnan(score):
            raise FloatingPointError(f"validation {spec.metric} is NaN at epoch {epoch}; "
                                     f"lower train.lr (now {spec.lr})")
        if best is None or M.better(spec.metric, score, history.best_score):
            history.best_epoch, history.best_score = epoch, score
            best = {k: v.detach().clone() for k, v in head.state_dict().items()}
            patience = spec.early_stopping or 0
        elif spec.early_stopping:
            patience -= 1
            history.stopped_early = patience <= 0
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if history.stopped_early:
            break
    head.load_state_dict(best)
    _fold_standardisation(head, mean, std)
    return history


@torch.no_grad()
def _fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """W (x - mean) / std + b = (W / std) x + (b - (W / std) mean): the head then takes raw embeddings."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    first.weight.div_(std)
    first.bias.sub_(first.weight @ mean)


def fit_sklearn_head(kind: str, c: float, x_train, y_train):
    """StandardScaler, then LogisticRegression(C=c) or an RBF SVC(C=c) with probabilities calibrated by
    cross-validation (CalibratedClassifierCV, sigmoid; SVC(probability=True) is deprecated in scikit-learn 1.9):
    a fitted scikit-learn Pipeline."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    y_train = np.asarray(y_train, dtype=np.int64)
    if kind == "logreg":
        estimator = LogisticRegression(C=c, max_iter=2000)
    elif kind == "svm":
        counts = np.bincount(y_train)
        folds = int(min(5, counts[counts > 0].min()))
        if folds < 2:
            raise RecipeError("model.head=svm calibrates its probabilities by cross-validation: every class needs "
                              "at least 2 training images; use model.head=logreg (or linear) for this data")
        estimator = CalibratedClassifierCV(SVC(C=c), cv=folds, ensemble=False)
    else:
        raise ValueError(f"model.head={kind!r} is not a scikit-learn head; those are: logreg, svm")
    return make_pipeline(StandardScaler(), estimator).fit(np.asarray(x_train, dtype=np.float32), y_train)


def sklearn_proba(pipeline, x, num_classes: int) -> np.ndarray:
    """predict_proba with one column per class of the competition (classes unseen in training get 0)."""
    probs = np.zeros((len(x), num_classes), dtype=np.float32)
    probs[:, pipeline.classes_] = pipeline.predict_proba(np.asarray(x, dtype=np.float32))
    return probs


def logreg_as_linear(pipeline, num_classes: int) -> nn.Linear:
    """The scaler + logistic regression as one nn.Linear whose softmax is predict_proba (exact):
    coef (x - mean) / scale + b = (coef / scale) x + (b - coef . mean / scale)."""
    scaler, lr = pipeline[0], pipeline[-1]
    coef = lr.coef_ / scaler.scale_
    bias = lr.intercept_ - coef @ scaler.mean_
    if len(lr.classes_) == 2:  # binary: P(second class) = sigmoid(z) = softmax([0, z])[1]
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = np.zeros((num_classes, coef.shape[1]))
    full_bias = np.full(num_classes, MISSING_LOGIT)
    weight[lr.classes_], full_bias[lr.classes_] = coef, bias
    linear = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(full_bias))
    return linear


class SklearnHead(nn.Module):
    """A fitted scikit-learn pipeline as the classifier: returns log-probabilities as the logits, so the softmax
    that TTA and the ensembles apply gives its predict_proba back. Not in the state dict: saved as head.pkl."""

    def __init__(self, pipeline, num_classes: int):
        super().__init__()
        self.pipeline = pipeline
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sklearn_proba(self.pipeline, x.detach().float().cpu().numpy(), self.num_classes)
        return torch.from_numpy(np.log(np.maximum(probs, 1e-8))).to(x.device)


def install_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the model's classifier is (model.fc, model.classifier, model.head, ...)."""
    current = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is current)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, head)
    return model


# ---------------------------------------------------------------- members (kit.members.train_member)

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


def restore_member_model(model: nn.Module, spec: ModelSpec, member_dir) -> nn.Module:
    """The architecture a feature_extract member was saved in (cut backbone, MLP or SVM head), built around the
    model kit.models.backbone.create_model(spec, C) returns, so that best.pt loads into it. Other strategies:
    the model as it is."""
    from kit.models.backbone import CutBackbone
    if spec.strategy != "feature_extract":
        return model
    classifier = model.get_classifier()
    num_classes = classifier.out_features
    if spec.cut_at is not None and not isinstance(model, CutBackbone):
        model = CutBackbone(model, spec.cut_at, num_classes, spec.drop_rate)
    if spec.head == "mlp":
        install_head(model, create_head(spec, model.get_classifier().in_features, num_classes))
    elif spec.head == "svm":
        with open(Path(member_dir) / HEAD_FILE, "rb") as f:
            install_head(model, SklearnHead(pickle.load(f), num_classes))  # written by fit_feature_member
    return model
