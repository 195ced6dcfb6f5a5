"""build_model(spec, num_classes, pretrained_cfg): a timm backbone with pretrained weights, carrying its own data
config, and a new classifier, optionally cut at an intermediate stage."""
from __future__ import annotations

import timm
import torch
from torch import nn

from kit.models.pretrained import load_pretrained, offline_data_config, resolve_weights
from kit.recipe import AugmentSpec, ModelSpec


class CutBackbone(nn.Module):
    """A timm model kept up to stage `index` (timm feature_info), globally pooled, with a new linear head.
    Later stages are pruned with timm's own prune_intermediate_layers, so they cost no memory or time."""

    def __init__(self, model: nn.Module, index: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        n = len(model.feature_info)
        if not 0 <= index < n:
            raise ValueError(f"model.cut_at={index} is out of range for {model.default_cfg.get('architecture')}: "
                             f"it has stages 0..{n - 1} ({', '.join(f['module'] for f in model.feature_info)})")
        self.num_features = model.feature_info[index]["num_chs"]
        self.pretrained_cfg = model.pretrained_cfg
        model.prune_intermediate_layers(indices=[index], prune_head=True, prune_norm=True)
        self.body = model
        self.index = index
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.body.forward_intermediates(x, indices=[self.index], intermediates_only=True)[0]

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.classifier(self.drop(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def group_matcher(self, coarse: bool = False):
        def prefixed(rule):
            if isinstance(rule, str):
                return "|".join(f"^body\\.{r.lstrip('^')}" for r in rule.split("|"))
            return [(prefixed(r), o) for r, o in rule]
        return {k: prefixed(v) for k, v in self.body.group_matcher(coarse=coarse).items()}


def pretrained_overlay(spec: ModelSpec, augment: AugmentSpec | None = None) -> dict:
    """What the model's pretrained_cfg must say beyond timm's default for the name: the offline weights' own
    preprocessing, then the recipe's augment.input_size / augment.crop_pct. timm.create_model applies it
    (pretrained_cfg_overlay), so the model carries its data config and transforms are derived from the model."""
    overlay = {}
    if resolve_weights(spec.backbone, spec.weights) == "offline":
        overlay.update(offline_data_config(spec.backbone))
    if augment is not None and augment.input_size is not None:
        overlay["input_size"] = (3, augment.input_size, augment.input_size)
    if augment is not None and augment.crop_pct is not None:
        overlay["crop_pct"] = augment.crop_pct
    return overlay


def build_model(spec: ModelSpec, num_classes: int | None, pretrained_cfg: dict | None = None, *,
                load_weights: bool = True, seed: int | None = None) -> tuple[nn.Module, str]:
    """The one way kit makes a model: timm's backbone carrying `pretrained_cfg` (an overlay, see
    pretrained_overlay), its weights (spec.weights; skipped with load_weights=False, e.g. before a checkpoint is
    loaded), cut at spec.cut_at for cut_at, and a new small classifier for num_classes (None: keep the pretrained
    1000-class head). The new head's initial weights are drawn from a generator seeded `seed` (a member's
    train.seed), not from torch's global generator. Returns (model, where the weights came from)."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(spec.backbone, pretrained=False, drop_rate=spec.drop_rate,
                              drop_path_rate=spec.drop_path_rate, pretrained_cfg_overlay=dict(pretrained_cfg or {}),
                              **kwargs)
    source = load_pretrained(model, spec.backbone, spec.weights) if load_weights else "checkpoint"
    if spec.cut_at is not None and spec.strategy in ("cut_at", "feature_extract"):
        model = CutBackbone(model, spec.cut_at, num_classes or 1000, spec.drop_rate)
    if num_classes is not None:
        init_head(model.get_classifier(), None if seed is None else torch.Generator().manual_seed(int(seed)))
    return model, source


def model_data_config(model: nn.Module) -> dict:
    """kit's data config {input_size: S, mean, std, crop_pct, interpolation} from the model's own pretrained_cfg
    (timm.data.resolve_model_data_config): the one source of sizes, crop and normalisation."""
    raw = timm.data.resolve_model_data_config(model)
    size = raw["input_size"]
    return {"input_size": int(size if isinstance(size, int) else max(size[-2:])),
            "mean": [float(m) for m in raw["mean"]], "std": [float(v) for v in raw["std"]],
            "crop_pct": float(raw.get("crop_pct") or 1.0), "interpolation": str(raw.get("interpolation") or "bilinear")}


def init_head(head: nn.Module, generator: torch.Generator | None = None) -> None:
    """A new classifier starts small (std 0.01, zero bias), as in BiT: timm's default for EfficientNet
    (uniform +-1/sqrt(classes) over 1280 features) starts 10 classes at logits of std ~3 and a loss of ~5,
    whose first gradients damage the pretrained features. Random, not zero: each member's seed still counts."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.01, generator=generator)
            nn.init.zeros_(m.bias)


def head_parameters(model: nn.Module) -> list[str]:
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def to_device(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    return model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
