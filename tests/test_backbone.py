"""kit.models.backbone: build_model for every strategy, the new head's small seeded init, cut models."""
from __future__ import annotations

import pytest
import torch

from kit.models.backbone import CutBackbone, build_model, head_parameters, init_head
from kit.recipe import ModelSpec

STRATEGIES = ("feature_extract", "finetune", "gradual", "full", "cut_at", "auto")


def spec(backbone="test_resnet", **kw) -> ModelSpec:
    if kw.get("strategy") == "cut_at":
        kw.setdefault("cut_at", 2)
    return ModelSpec(backbone=backbone, weights="none", **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_create_model_for_every_strategy(backbone, strategy):
    torch.manual_seed(0)
    model, source = build_model(spec(backbone, strategy=strategy), num_classes=5)
    assert source.startswith("none")
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    assert model.get_classifier().out_features == 5
    assert set(head_parameters(model)) == {n for n, _ in model.named_parameters()
                                           if n.split(".")[-2] in ("fc", "classifier")}
    assert isinstance(model, CutBackbone) == (strategy == "cut_at")


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "resnet10t"])
def test_new_head_starts_small(backbone):
    torch.manual_seed(0)
    model, _ = build_model(spec(backbone), num_classes=10)
    head = model.get_classifier()
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert head.weight.abs().max().item() < 0.06  # no outliers: logits start near 0 whatever the features
    assert torch.count_nonzero(head.bias) == 0


def test_head_init_follows_the_seed():
    def head(seed, **kw):
        torch.manual_seed(seed)
        return build_model(spec(**kw), num_classes=4)[0].get_classifier().weight.detach().clone()
    assert torch.equal(head(0), head(0))
    assert not torch.allclose(head(0), head(1))
    assert torch.equal(head(3, strategy="cut_at"), head(3, strategy="cut_at"))
    assert not torch.allclose(head(3, strategy="cut_at"), head(4, strategy="cut_at"))


def test_init_head_handles_an_mlp_head():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    init_head(mlp)
    for layer in (mlp[0], mlp[2]):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.3)
        assert torch.count_nonzero(layer.bias) == 0


def test_drop_rate_reaches_the_model():
    model, _ = build_model(spec(drop_rate=0.3), num_classes=3)
    assert model.drop_rate == 0.3
