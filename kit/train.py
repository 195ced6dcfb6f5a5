"""fit(): the one training loop of kit, for a member's whole model on images and for a shallow head on cached
embeddings (kit.features) alike: any loaders yielding (x, y, row) batches. Knows nothing of Optuna or
ensembles: a tuner passes `on_epoch_end`, which may raise to stop (a pruned trial), after the epoch's
checkpoint is on disk.

Checkpoints hold tensors and plain numbers, strings, lists and dicts only, so that they load with
torch.load(weights_only=True): a planted last.pt cannot run code (kit.models.pretrained.load_tensor_file).

Out of memory (CUDA): a batch that does not fit is split into micro-batches of half the size, their gradients
accumulated (the update is the whole batch's), and the smaller size kept for the rest of the run (in last.pt too);
validation passes shrink the same way. Under torchrun (kit.distributed) the model trains under
DistributedDataParallel, the validation predictions are gathered, and only rank 0 writes."""
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
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from kit import distributed
from kit import metrics as M
from kit.task import Task, activate, create_loss, multiclass
from kit.errors import DataError, OutOfMemory, RunDirError
from kit.errors import UnsafeFileError
from kit.models.pretrained import load_tensor_file
from kit.models.strategies import apply_freeze, param_groups, set_train_mode
from kit.recipe import ModelSpec, TrainSpec
from kit.rundir import atomic_save, write_csv_atomic
from kit.runtime import OUT_OF_MEMORY, halve_after_oom, resolve_amp


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch: losses, metrics, lr, images/s
    best_epoch: int = -1
    best_score: float = float("nan")
    stopped_early: bool = False
    micro_batch: Optional[int] = None  # images a pass after out of memory halved the batch (None: never)


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
    micro_batch: Optional[int] = None  # rows a forward pass after out of memory halved it (None: the whole batch)


def create_optimizer(params, spec: TrainSpec) -> torch.optim.Optimizer:
    """timm's optimizer factory on a module or on a list of parameter groups (kit.models.strategies.param_groups:
    dicts of lists), fused where torch can fuse it (every parameter a float on the CPU or a GPU): one kernel for all
    the parameters instead of a loop over them. efficientnet_lite0's AdamW step took 13.4 ms on this 2-core CPU,
    fused 4.3 ms (a training step at 64 px, batch 32: ~150 ms); SGD with momentum 5.8 ms, fused 2.5."""
    # timm's "sgd" is Nesterov SGD, which torch refuses without momentum: momentum 0 is plain SGD ("momentum")
    opt = "momentum" if spec.optimizer == "sgd" and spec.momentum == 0 else spec.optimizer
    tensors = list(params.parameters()) if isinstance(params, nn.Module) else [p for g in params for p in g["params"]]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return create_optimizer_v2(params, opt=opt, lr=spec.lr, weight_decay=spec.weight_decay, momentum=spec.momentum,
                               **({"fused": True} if fused else {}))


LR_FLOOR = 1e-3  # cosine: warm-up starts and the decay ends at 1e-3 x each group's lr (timm's warmup_lr, min_lr)


def cosine_factor(step: int, total: int, warmup: float) -> float:
    """The cosine schedule's multiplier of every group's lr after `step` optimizer updates: linear warm-up from
    LR_FLOOR to 1 over `warmup` updates, cosine from the start of the schedule down to LR_FLOOR at `total`
    (timm's CosineLRScheduler arithmetic with warmup_prefix=False, so recipes tuned on it keep their lrs)."""
    if step < warmup:
        return LR_FLOOR + step * (1.0 - LR_FLOOR) / warmup
    if step >= total:
        return LR_FLOOR
    return LR_FLOOR + 0.5 * (1.0 - LR_FLOOR) * (1.0 + math.cos(math.pi * step / total))


def create_schedule(optimizer, spec: TrainSpec, updates_per_epoch: int):
    """The recipe's lr schedule, a torch scheduler stepped once per optimizer update (None: constant lr).
    Both schedules multiply each group's own lr by one factor of the step, the convention of
    kit.models.strategies: a backbone group at 0.1 x the head's lr stays at exactly 0.1 x at every step."""
    total = spec.epochs * updates_per_epoch
    if spec.scheduler == "onecycle":  # per group: max_lr / 25 -> max_lr -> max_lr / 25e4, all the same shape
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(0.5, max(spec.warmup / spec.epochs, 0.05)))
    if spec.scheduler == "cosine":
        warmup = spec.warmup * updates_per_epoch
        # a plain function, not a callable object: LambdaLR then keeps it out of its state dict
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total, warmup))
    return None


def _setup(model, model_spec: ModelSpec, spec: TrainSpec, n_batches: int, task: Task, device, amp_dtype):
    optimizer = create_optimizer(param_groups(model, model_spec, spec), spec)
    updates = max(1, math.ceil(n_batches / spec.accum_steps))
    scheduler = create_schedule(optimizer, spec, updates)
    mixup = None
    if spec.mixup > 0 or spec.cutmix > 0:  # multiclass only (kit.plan.check_task_recipe)
        mixup = Mixup(mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix, label_smoothing=spec.label_smoothing,
                      num_classes=task.n_outputs)
    loss = create_loss(task, spec.label_smoothing, soft=mixup is not None).to(device)  # a BCE pos_weight is a buffer
    ema = ModelEmaV3(model, decay=spec.ema_decay) if spec.ema else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Setup(optimizer, scheduler, loss, mixup, ema, scaler, updates)


@dataclass
class PassLimit:
    """The images a forward pass may hold after out of memory halved it (None: a whole batch); kept by the caller
    across calls, so that the next epoch's validation does not run out of memory again first."""
    rows: Optional[int] = None


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device, amp_dtype=None, channels_last=False, log=None,
             limit: PassLimit | None = None, task: Task | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The task's scores (kit.task.activate; softmax probabilities without a task) of one view per image, and the
    table rows they belong to, in loader order. Out of memory halves the images of a pass
    (kit.runtime.halve_after_oom), in `limit` when given."""
    model.eval()
    probs, rows = [], []
    limit = limit if limit is not None else PassLimit()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, _, idx in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        a = 0
        while a < len(x):
            step = limit.rows or len(x)
            try:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(x[a:a + step])
            except OUT_OF_MEMORY:
                logits = None  # handled outside the except block, so that the failed pass can be freed first
            if logits is None:
                limit.rows = halve_after_oom(min(step, len(x) - a), device, "validating", log)
                continue
            probs.append((activate(task, logits) if task is not None else torch.softmax(logits.float(), dim=1))
                         .cpu().numpy())
            a += step
        rows.append(idx.numpy())
    return np.concatenate(probs), np.concatenate(rows)


def _train_epoch(model, loader, s: Setup, spec: TrainSpec, epoch: int, device, amp_dtype, channels_last, progress,
                 log=None, net=None):
    """One epoch; `net` computes the loss (the model under DistributedDataParallel, kit.distributed), `model`
    is the module itself."""
    net = net if net is not None else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    total, seen, start = 0.0, 0, time.perf_counter()
    s.optimizer.zero_grad(set_to_none=True)
    n = len(loader)
    window = []  # the batches of this accumulation window, kept on the device to redo them after out of memory
    for i, (x, y, _) in enumerate(loader):
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        if s.mixup is not None:
            x, y = s.mixup(x, y)
        window.append((x, y))
        loss = _backward(net, window, s, spec, epoch, i, amp_dtype, device, log)
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
            window = []
            if s.scheduler is not None:
                s.scheduler.step()
            if s.ema is not None:
                s.ema.update(model, step=epoch * s.updates_per_epoch + (i // spec.accum_steps) + 1)
        total += loss * len(x)
        seen += len(x)
        if progress is not None:
            progress(i + 1, n, total / seen, seen / (time.perf_counter() - start))
    return total / max(seen, 1), seen / (time.perf_counter() - start)


def _backward(model, window, s: Setup, spec: TrainSpec, epoch: int, i: int, amp_dtype, device, log) -> float:
    """Backward of the newest batch of `window` in micro-batches of s.micro_batch rows (None: the whole batch);
    returns its mean loss. Out of memory (CUDA) halves the micro-batch and redoes the whole window from zeroed
    gradients: each micro-batch's loss is weighted by its share of the batch, so the update is the one of the full
    batch (the effective batch, batch_size x accum_steps, does not change; only BatchNorm sees smaller batches)."""
    todo = window[-1:]
    while True:
        try:
            for x, y in todo:
                loss = _backward_batch(model, x, y, s, spec, epoch, i, amp_dtype)
            return loss
        except OUT_OF_MEMORY:
            pass  # handled outside the except block, so that the failed step's tensors can be freed first
        rows = len(window[-1][0])
        if distributed.current() is not None:  # the other ranks' gradient reductions would pair with the wrong ones
            raise OutOfMemory(f"out of memory on {device} training under torchrun, {rows} images a process: set "
                              f"train.batch_size lower with train.accum_steps higher (their product is the batch "
                              f"that counts); alone, kit would have halved it itself")
        s.optimizer.zero_grad(set_to_none=True)
        s.micro_batch = halve_after_oom(
            min(s.micro_batch or rows, rows), device, f"training (epoch {epoch}, batch {i}) on", log,
            then=f", gradients accumulated over them: the effective batch ({spec.batch_size} x accum_steps "
                 f"{spec.accum_steps}) is unchanged")
        todo = window


def _backward_batch(model, x, y, s: Setup, spec: TrainSpec, epoch: int, i: int, amp_dtype) -> float:
    n = len(x)
    step = s.micro_batch or n
    total = 0.0
    for a in range(0, n, step):
        xb, yb = x[a:a + step], y[a:a + step]
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = s.loss(model(xb), yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, batch {i}; "
                                     f"lower train.lr (now {spec.lr}) or set train.grad_clip")
        part = loss / spec.accum_steps if step >= n else loss * (len(xb) / n) / spec.accum_steps
        (s.scaler.scale(part) if s.scaler else part).backward()
        if step >= n:
            return loss.item()
        total += loss.item() * len(xb)
    return total / n


def _plain(value):
    """Numbers as Python int/float (numpy scalars pickle as numpy objects, which weights_only refuses)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _rng_state(device) -> dict:
    """torch's and numpy's global generators (numpy: timm's Mixup draws from it) as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if device.type == "cuda":  # dropout and drop-path on the GPU draw from its own generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _checkpoint_state(model, s: Setup, epoch: int, history: History, patience_left: int, device) -> dict:
    return {
        "epoch": epoch, "model": model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
        "ema": s.ema.state_dict() if s.ema is not None else None,
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "history": _plain(history.__dict__), "patience_left": patience_left, "rng": _rng_state(device),
    }


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "ema", "scaler", "history", "patience_left", "rng")
_DELETE_TO_RETRAIN = "delete it to retrain that member"


def load_checkpoint(path, fix: str = _DELETE_TO_RETRAIN) -> dict:
    """A checkpoint kit wrote (last.pt, best.pt), tensors only, on the CPU; UnsafeFileError names a file that
    holds anything else, or is corrupt, and `fix` says what to do."""
    return load_tensor_file(path, fix=fix, legacy=False)  # kit writes torch zip archives only


def _resume(last: Path, model, s: Setup, device) -> tuple[History, int, int]:
    """Restore everything the loop carries from one epoch to the next; (history, next epoch, patience left)."""
    state = load_checkpoint(last)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UnsafeFileError(f"{last} is not a kit training checkpoint (no {', '.join(missing)}); "
                              f"{_DELETE_TO_RETRAIN}")
    model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    if s.scheduler is not None and state["scheduler"] is not None:
        s.scheduler.load_state_dict(state["scheduler"])
    if s.ema is not None and state["ema"] is not None:
        s.ema.load_state_dict(state["ema"])
    if s.scaler is not None and state["scaler"] is not None:
        s.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], device)
    return History(**state["history"]), state["epoch"] + 1, state["patience_left"]


def fit(model: nn.Module, train_loader, val_loader, val_labels: np.ndarray, model_spec: ModelSpec,
        spec: TrainSpec, out_dir, *, task: Task | None = None, num_classes: int | None = None,
        device: torch.device, channels_last: bool = True,
        resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
        progress_factory=None, log: Callable[[str], None] | None = None) -> History:
    """Train, validate every epoch, keep `last.pt` (resumable) and `best.pt` (weights of the best epoch).
    Batches are (x, y, row): row indexes `val_labels` for the validation loader. Without a validation loader (a
    member refitted on every labelled image for a number of epochs chosen on the holdout), nothing is scored
    and best.pt holds the last epoch's weights."""
    if task is None:  # num_classes: one class per image
        task = multiclass([str(k) for k in range(num_classes)], "accuracy" if spec.metric == "auto" else spec.metric)
    name = task.metric if spec.metric == "auto" else spec.metric
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype = resolve_amp(spec.amp, device)
    metric = M.get_metric(name)
    main = distributed.is_main()  # under torchrun only rank 0 writes; every rank trains, scores and decides alike
    s = _setup(model, model_spec, spec, len(train_loader), task, device, amp_dtype)
    history, start, patience_left = History(), 0, spec.early_stopping or 0
    val_limit = PassLimit()
    # torch.compile once: the compiled module shares the model's parameters (the state dicts stay the model's)
    compiled = torch.compile(model) if spec.compile else model
    last = out_dir / "last.pt"
    if last.exists():
        if not resume:
            raise RunDirError(f"{last} exists from an earlier, interrupted run; resume it with --resume, "
                              f"or remove {out_dir} to start over")
        history, start, patience_left = _resume(last, model, s, device)
        s.micro_batch = history.micro_batch  # a batch that ran out of memory before would again
        if history.stopped_early:
            start = spec.epochs
    for epoch in range(start, spec.epochs):
        frozen = apply_freeze(model, model_spec, epoch)
        set_train_mode(model)
        net = distributed.wrap(compiled, device)  # after the freeze: DDP reduces the parameters needing a gradient
        if hasattr(train_loader, "generator") and train_loader.generator is not None:
            # the shuffle order of an epoch depends on (seed, epoch) alone: resumable
            train_loader.generator.manual_seed(spec.seed * 100_003 + epoch)
        if hasattr(train_loader, "set_epoch"):  # kit.data loaders: augmentation seeded by (seed, epoch, index)
            train_loader.set_epoch(epoch)
        bar = progress_factory(epoch) if progress_factory else None
        t0 = time.perf_counter()
        train_loss, ips = _train_epoch(model, train_loader, s, spec, epoch, device, amp_dtype, channels_last, bar,
                                       log, net)
        train_loss, ips = distributed.mean(train_loss), distributed.total(ips)
        history.micro_batch = s.micro_batch
        eval_model = s.ema.module if s.ema is not None else model
        scores = {}
        if val_loader is not None:
            probs, rows = evaluate(compiled if s.ema is None else eval_model, val_loader, device, amp_dtype,
                                   channels_last, log, val_limit, task)
            probs, rows = distributed.gather_rows(probs, rows)
            scores = M.score_all(val_labels[rows], probs, task.metrics)
        row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
               "lr": max(g["lr"] for g in s.optimizer.param_groups), "frozen_stages": frozen,
               "train_images_per_s": ips, "seconds": time.perf_counter() - t0}
        history.epochs.append(_plain(row))
        best = None
        if val_loader is None:  # nothing to choose by: the last epoch is the member
            history.best_epoch, history.best_score = epoch, float("nan")
            best = {"model": eval_model.state_dict(), "epoch": epoch, "score": None}
        else:
            score = scores[name]
            if math.isnan(score) and np.isfinite(probs).all():  # the metric is undefined on these rows
                raise DataError(f"validation {name} is undefined on this member's {len(rows)} validation images (e.g. "
                                f"ROC AUC or kappa where they hold one class or grade only); make each fold hold "
                                f"every class: fewer data.folds, a larger data.holdout_fraction, or another "
                                f"train.metric")
            if math.isnan(score):
                raise FloatingPointError(f"validation {name} is NaN at epoch {epoch}; "
                                         f"lower train.lr (now {spec.lr}) or set train.grad_clip")
            if history.best_epoch < 0 or M.better(metric.name, score, history.best_score):
                history.best_epoch, history.best_score = epoch, float(score)
                patience_left = spec.early_stopping or 0
                best = {"model": eval_model.state_dict(), "epoch": epoch, "score": float(score)}
            elif spec.early_stopping:
                patience_left -= 1
                history.stopped_early = patience_left <= 0
        if main:
            if best is not None:
                atomic_save(best, out_dir / "best.pt")
            atomic_save(_checkpoint_state(model, s, epoch, history, patience_left, device), last)
            write_csv_atomic(out_dir / "history.csv", history.epochs)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if history.stopped_early:
            break
    distributed.barrier()  # best.pt is on disk before any rank reads it
    return history
