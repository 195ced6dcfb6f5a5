"""Transfer strategies: which parameters train at which epoch, and with which learning rate.

Stages come from timm's own grouping (model.group_matcher(coarse=True)): group 0 is the stem, then one
group per stage, input side first; the classifier is the head. `frozen_stages: k` freezes groups 0..k-1.
A module without a group matcher and a classifier (a shallow head on cached embeddings) is all head.

The learning-rate convention, one for every scheduler: each parameter group's `lr` is its own absolute
peak lr (train.lr x its scale), and schedulers only multiply every group's lr by the same factor of the step
(kit.train.create_schedule), so the ratios between groups hold at every step, warm-up included. No group
carries timm's `lr_scale` key (timm's schedulers would multiply by it a second time); the scale is kept under
LR_SCALE_KEY for display and tests only.
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

from kit.errors import RecipeError
from kit.models.backbone import build_model, head_parameters
from kit.recipe import ModelSpec, TrainSpec

LR_SCALE_KEY = "kit_lr_scale"  # a group's lr / train.lr; read by nothing that sets learning rates


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of each backbone stage, input side first; the head is left out."""
    if not hasattr(model, "group_matcher"):
        return []  # a bare head: no stages
    head = set(head_parameters(model))
    groups = group_parameters(model, model.group_matcher(coarse=True))
    stages = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [s for s in stages if s]


def frozen_count(spec: ModelSpec, epoch: int, n_stages: int) -> int:
    """How many leading stages are frozen at `epoch` (0-based). A pure function of the epoch, so that a
    resumed run restores gradual unfreezing exactly."""
    if spec.strategy == "feature_extract":
        return n_stages
    if spec.strategy == "full":
        return 0
    if spec.strategy == "gradual":
        # epoch 0..unfreeze_every-1: head only; then one more stage from the top every unfreeze_every epochs
        return max(0, n_stages - epoch // spec.unfreeze_every)
    if spec.frozen_stages > n_stages:
        raise ValueError(f"model.frozen_stages={spec.frozen_stages} but this backbone has {n_stages} stages "
                         f"(stem + blocks); use 0..{n_stages}")
    return spec.frozen_stages  # finetune, cut_at


def apply_freeze(model: nn.Module, spec: ModelSpec, epoch: int) -> int:
    stages = stage_groups(model)
    k = frozen_count(spec, epoch, len(stages))
    frozen = {n for s in stages[:k] for n in s}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return k


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm layers whose parameters are frozen: their running statistics stay as
    pretrained (a frozen feature extractor must compute the same features every epoch)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _no_decay(name: str, p, skip: set) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or name in skip


def param_groups(model: nn.Module, spec: ModelSpec, train: TrainSpec) -> list[dict]:
    """Optimizer parameter groups, each with its absolute `lr` and its scale under LR_SCALE_KEY (see the
    module docstring). All backbone parameters are in the optimizer from the start (frozen ones simply get no
    gradient), so that gradual unfreezing needs no new optimizer and its state resumes."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    lr = train.lr_for(spec.strategy)
    if spec.strategy == "full" and spec.layer_decay is not None:
        groups = param_groups_layer_decay(model, weight_decay=train.weight_decay, no_weight_decay_list=skip,
                                          layer_decay=spec.layer_decay)
        for g in groups:
            g[LR_SCALE_KEY] = g.pop("lr_scale")
            g["lr"] = lr * g[LR_SCALE_KEY]
        return groups
    if hasattr(model, "get_classifier"):
        head = set(head_parameters(model))
    else:  # a shallow head on embeddings (kit.features): every parameter is the head's
        head = {n for n, _ in model.named_parameters()}
    backbone_scale = 1.0 if spec.strategy == "full" else spec.backbone_lr_scale
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        is_head = name in head
        if spec.strategy == "feature_extract" and not is_head:
            continue
        key = (1.0 if is_head else backbone_scale, _no_decay(name, p, skip))
        buckets.setdefault(key, []).append(p)
    return [{"params": ps, LR_SCALE_KEY: scale, "lr": lr * scale,
             "weight_decay": 0.0 if no_decay else train.weight_decay}
            for (scale, no_decay), ps in buckets.items()]


@lru_cache(maxsize=64)
def _stage_layout(spec: ModelSpec) -> tuple[tuple[str, ...], int] | None:
    """(the modules of timm's feature_info, which cut_at indexes; the number of stages frozen_stages counts) of
    the model training would build, or None when it cannot be built without memory. Built on the meta device:
    no weights are allocated (efficientnet_lite0: 0.03 s, vit_huge: 0.2 s)."""
    import timm
    import torch
    try:
        with torch.device("meta"):
            info = getattr(timm.create_model(spec.backbone, pretrained=False), "feature_info", None) or []
            names = tuple(str(f.get("module", i)) for i, f in enumerate(info))
            if spec.cut_at is not None and spec.cut_at >= len(names):
                return names, 0
            model, _ = build_model(spec, None, load_weights=False)
            return names, len(stage_groups(model))
    except Exception:  # e.g. a model that calls .item() while it is built: training builds it and checks again
        return None


def check_stages(m: ModelSpec, source: str) -> None:
    """model.cut_at and model.frozen_stages within the backbone's stages (checked by the plan, before the model
    is built: a cut_at out of range would fail inside timm)."""
    frozen = m.frozen_stages > 0 and m.strategy in ("finetune", "cut_at")
    if m.cut_at is None and not frozen:
        return
    layout = _stage_layout(m)
    if layout is None:
        return
    names, n_stages = layout
    if m.cut_at is not None and m.cut_at >= len(names):
        stages = ", ".join(f"{i}: {n}" for i, n in enumerate(names)) or "none"
        raise RecipeError(f"recipe key 'model.cut_at' in {source}: {m.cut_at} is out of range for {m.backbone}, "
                          f"whose stages (timm feature_info) are {stages}; use 0..{len(names) - 1}"
                          if names else f"recipe key 'model.cut_at' in {source}: {m.backbone} has no stages timm "
                                        f"can cut at (no feature_info); use another strategy or backbone")
    if frozen and m.frozen_stages > n_stages:
        raise RecipeError(f"recipe key 'model.frozen_stages' in {source}: {m.frozen_stages}, but {m.backbone} has "
                          f"{n_stages} stages (stem + blocks, timm's group_matcher); use 0..{n_stages}")
