"""fit(): the training loop of one member. Knows nothing of Optuna or ensembles: a tuner passes
`on_epoch_end`, which may raise to stop (a pruned trial), after the epoch's checkpoint is on disk."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from kit import metrics as M
from kit.models.strategies import apply_freeze, param_groups, set_train_mode
from kit.recipe import ModelSpec, TrainSpec
from kit.rundir import atomic_save, write_csv_atomic
from kit.runtime import resolve_amp


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch: losses, metrics, lr, images/s
    best_epoch: int = -1
    best_score: float = float("nan")
    stopped_early: bool = False


@dataclass
class Setup:
    """Everything fit builds from the specs; kept apart so resume can restore it in one place."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss: nn.Module
    mixup: Optional[Mixup]
    ema: Optional[ModelEmaV3]
    scaler: Optional[torch.amp.GradScaler]
    updates_per_epoch: int


def create_optimizer(params, spec: TrainSpec) -> torch.optim.Optimizer:
    """timm's optimizer factory on a module or parameter groups (with lr_scale) from the recipe."""
    # timm's "sgd" is Nesterov SGD, which torch refuses without momentum: momentum 0 is plain SGD ("momentum")
    opt = "momentum" if spec.optimizer == "sgd" and spec.momentum == 0 else spec.optimizer
    return create_optimizer_v2(params, opt=opt, lr=spec.lr, weight_decay=spec.weight_decay, momentum=spec.momentum)


def create_schedule(optimizer, spec: TrainSpec, updates_per_epoch: int):
    """The recipe's learning-rate schedule, stepped per optimizer update (None: constant)."""
    if spec.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=spec.epochs * updates_per_epoch,
            pct_start=min(0.5, max(spec.warmup_epochs / spec.epochs, 0.05)))
    if spec.scheduler == "cosine":
        # timm's schedulers compute one value per group from its initial_lr, then multiply it by the group's
        # lr_scale: started from the already scaled lr, a backbone at scale 0.1 would train at 0.01 x lr.
        for g in optimizer.param_groups:
            g["initial_lr"] = g["lr"] / g.get("lr_scale", 1.0)
        return create_scheduler_v2(optimizer, sched="cosine", num_epochs=spec.epochs,
                                   warmup_epochs=spec.warmup_epochs, warmup_lr=spec.lr * 1e-3,
                                   min_lr=spec.lr * 1e-3, step_on_epochs=False,
                                   updates_per_epoch=updates_per_epoch)[0]
    return None


def _setup(model, model_spec: ModelSpec, spec: TrainSpec, n_batches: int, num_classes: int, device, amp_dtype):
    optimizer = create_optimizer(param_groups(model, model_spec, spec), spec)
    updates = max(1, math.ceil(n_batches / spec.accum_steps))
    scheduler = create_schedule(optimizer, spec, updates)
    mixup = None
    if spec.mixup > 0 or spec.cutmix > 0:
        mixup = Mixup(mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix, label_smoothing=spec.label_smoothing,
                      num_classes=num_classes)
    loss = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    ema = ModelEmaV3(model, decay=spec.ema_decay) if spec.ema else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Setup(optimizer, scheduler, loss, mixup, ema, scaler, updates)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device, amp_dtype=None, channels_last=False) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of one view per image, and the table rows they belong to, in loader order."""
    model.eval()
    probs, rows = [], []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, _, idx in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        rows.append(idx.numpy())
    return np.concatenate(probs), np.concatenate(rows)


def _train_epoch(model, loader, s: Setup, spec: TrainSpec, epoch: int, device, amp_dtype, channels_last, progress):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    total, seen, start = 0.0, 0, time.perf_counter()
    s.optimizer.zero_grad(set_to_none=True)
    n = len(loader)
    for i, (x, y, _) in enumerate(loader):
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        if s.mixup is not None:
            x, y = s.mixup(x, y)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = s.loss(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, batch {i}; "
                                     f"lower train.lr (now {spec.lr}) or set train.grad_clip")
        scaled = loss / spec.accum_steps
        (s.scaler.scale(scaled) if s.scaler else scaled).backward()
        if (i + 1) % spec.accum_steps == 0 or i + 1 == n:
            if s.scaler:
                s.scaler.unscale_(s.optimizer)
            if spec.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            if s.scaler:
                s.scaler.step(s.optimizer)
                s.scaler.update()
            else:
                s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            update = epoch * s.updates_per_epoch + (i // spec.accum_steps) + 1
            if s.scheduler is not None:
                s.scheduler.step() if isinstance(s.scheduler, torch.optim.lr_scheduler.OneCycleLR) \
                    else s.scheduler.step_update(update)
            if s.ema is not None:
                s.ema.update(model, step=update)
        total += loss.item() * len(x)
        seen += len(x)
        if progress is not None:
            progress(i + 1, n, total / seen, seen / (time.perf_counter() - start))
    return total / max(seen, 1), seen / (time.perf_counter() - start)


def _checkpoint_state(model, s: Setup, epoch: int, history: History, patience_left: int) -> dict:
    return {
        "epoch": epoch, "model": model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
        "ema": s.ema.state_dict() if s.ema is not None else None,
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "history": history.__dict__, "patience_left": patience_left,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
    }


def fit(model: nn.Module, train_loader, val_loader, val_labels: np.ndarray, model_spec: ModelSpec,
        spec: TrainSpec, out_dir, *, num_classes: int, device: torch.device, channels_last: bool = True,
        resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
        progress_factory=None) -> History:
    """Train, validate every epoch, keep `last.pt` (resumable) and `best.pt` (weights of the best epoch)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype = resolve_amp(spec.amp, device)
    metric = M.get_metric(spec.metric)
    s = _setup(model, model_spec, spec, len(train_loader), num_classes, device, amp_dtype)
    history, start, patience_left = History(), 0, spec.early_stopping or 0
    last = out_dir / "last.pt"
    if last.exists():
        if not resume:
            raise FileExistsError(f"{last} exists from an earlier run; resume it with --resume, "
                                  f"or remove {out_dir} to start over")
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        if s.scheduler is not None and state["scheduler"] is not None:
            s.scheduler.load_state_dict(state["scheduler"])
        if s.ema is not None and state["ema"] is not None:
            s.ema.load_state_dict(state["ema"])
        if s.scaler is not None and state["scaler"] is not None:
            s.scaler.load_state_dict(state["scaler"])
        history = History(**state["history"])
        patience_left = state["patience_left"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        start = state["epoch"] + 1
        if history.stopped_early:
            start = spec.epochs
    for epoch in range(start, spec.epochs):
        frozen = apply_freeze(model, model_spec, epoch)
        set_train_mode(model)
        if hasattr(train_loader, "generator") and train_loader.generator is not None:
            # the shuffle order and augmentation seeds of an epoch depend on (seed, epoch) alone: resumable
            train_loader.generator.manual_seed(spec.seed * 100_003 + epoch)
        bar = progress_factory(epoch) if progress_factory else None
        t0 = time.perf_counter()
        train_loss, ips = _train_epoch(model, train_loader, s, spec, epoch, device, amp_dtype, channels_last, bar)
        eval_model = s.ema.module if s.ema is not None else model
        probs, rows = evaluate(eval_model, val_loader, device, amp_dtype, channels_last)
        scores = M.score_all(val_labels[rows], probs)
        row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
               "lr": max(g["lr"] for g in s.optimizer.param_groups), "frozen_stages": frozen,
               "train_images_per_s": ips, "seconds": time.perf_counter() - t0}
        history.epochs.append(row)
        score = scores[spec.metric]
        if math.isnan(score):
            raise FloatingPointError(f"validation {spec.metric} is NaN at epoch {epoch}")
        if history.best_epoch < 0 or metric.higher_is_better and score > history.best_score \
                or not metric.higher_is_better and score < history.best_score:
            history.best_epoch, history.best_score = epoch, score
            patience_left = spec.early_stopping or 0
            atomic_save({"model": eval_model.state_dict(), "epoch": epoch, "score": score}, out_dir / "best.pt")
        elif spec.early_stopping:
            patience_left -= 1
            history.stopped_early = patience_left <= 0
        atomic_save(_checkpoint_state(model, s, epoch, history, patience_left), last)
        write_csv_atomic(out_dir / "history.csv", history.epochs)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if history.stopped_early:
            break
    return history
