"""kit.models.strategies: for each transfer strategy, which parameters train at which epoch and with which
learning rate; and the one lr convention: each group's lr is absolute, and the schedulers built by kit.train
multiply every group by the same factor at every step, so the ratios between groups hold throughout."""
from __future__ import annotations

import pytest
import timm
import torch

from kit.task import multiclass

from kit.models.backbone import build_model, head_parameters
from kit.models.strategies import LR_SCALE_KEY, apply_freeze, frozen_count, param_groups, set_train_mode, stage_groups
from kit.recipe import ModelSpec, TrainSpec
from kit.train import _setup, cosine_factor

LR = 0.01


def make(strategy="finetune", backbone="test_resnet", num_classes=3, **kw):
    torch.manual_seed(0)
    s = ModelSpec(backbone=backbone, weights="none", strategy=strategy, **kw)
    return build_model(s, num_classes)[0], s


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def lr_of(groups, model) -> dict[str, float]:
    """Parameter name -> its group's lr."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: g["lr"] for g in groups for p in g["params"]}


def all_approx(values, expected) -> bool:
    values = list(values)
    return bool(values) and all(v == pytest.approx(expected) for v in values)


def reference_lrs(train: TrainSpec, updates: int, steps) -> list[float]:
    """The lr of one unscaled parameter group under the same schedule (timm's own arithmetic)."""
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=train.epochs, warmup_epochs=train.warmup_epochs,
                                   warmup_lr=train.lr * 1e-3, min_lr=train.lr * 1e-3, step_on_epochs=False,
                                   updates_per_epoch=updates)
    out = []
    for t in steps:
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return out


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def one_step(model, groups, lr=LR):
    opt = torch.optim.SGD(groups, lr=lr)
    set_train_mode(model)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32) * 3 + 1), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()


@pytest.mark.parametrize("backbone, n_stages", [("test_resnet", 5), ("test_efficientnet", 6), ("resnet10t", 5)])
def test_stage_groups_follow_timm_coarse_groups(backbone, n_stages):
    model, _ = make(backbone=backbone)
    stages = stage_groups(model)
    assert len(stages) == n_stages
    names = [n for s in stages for n in s]
    head = set(head_parameters(model))
    assert len(names) == len(set(names))  # each parameter in one stage
    assert set(names) | head == {n for n, _ in model.named_parameters()} and not head & set(names)
    assert stages[0][0].startswith(("conv1", "conv_stem"))  # input side first


def test_feature_extract_trains_only_the_head_and_keeps_batchnorm_statistics():
    model, s = make("feature_extract")
    assert apply_freeze(model, s, epoch=0) == 5
    assert trainable(model) == set(head_parameters(model)) == {"fc.weight", "fc.bias"}
    groups = param_groups(model, s, TrainSpec(lr=LR))
    assert set(lr_of(groups, model)) == {"fc.weight", "fc.bias"}
    assert all(g["lr"] == LR and g[LR_SCALE_KEY] == 1.0 for g in groups)
    set_train_mode(model)
    assert model.training and all(not m.training for m in bn_layers(model))
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    head_before = model.fc.weight.detach().clone()
    one_step(model, groups)
    after = model.state_dict()
    for k, v in before.items():  # weights, running_mean, running_var, num_batches_tracked
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, model.fc.weight)
    # later epochs: still all frozen
    assert apply_freeze(model, s, epoch=7) == 5 and trainable(model) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_finetune_freezes_exactly_the_first_k_stages(k):
    model, s = make("finetune", frozen_stages=k, backbone_lr_scale=0.1)
    stages = stage_groups(model)
    assert apply_freeze(model, s, epoch=0) == k
    frozen = {n for st in stages[:k] for n in st}
    assert trainable(model) == {n for n, _ in model.named_parameters()} - frozen
    set_train_mode(model)
    frozen_bn = [m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                 and f"{name}.weight" in frozen]
    assert all(not m.training for m in frozen_bn)
    assert all(m.training for m in bn_layers(model) if m not in frozen_bn)
    lrs = lr_of(param_groups(model, s, TrainSpec(lr=LR)), model)
    head = set(head_parameters(model))
    assert len(lrs) == len(list(model.parameters()))  # frozen ones too: no new optimizer when unfreezing
    assert all_approx([lrs[n] for n in head], LR)
    assert all_approx([lrs[n] for n in lrs if n not in head], LR * 0.1)


def test_finetune_frozen_stages_out_of_range_names_the_valid_values():
    model, s = make("finetune", frozen_stages=9)
    with pytest.raises(ValueError, match=r"frozen_stages=9.*5 stages.*0\.\.5"):
        apply_freeze(model, s, epoch=0)


def test_gradual_unfreezes_one_stage_from_the_top_every_n_epochs():
    model, s = make("gradual", unfreeze_every=2)
    stages = stage_groups(model)
    counts = [apply_freeze(model, s, e) for e in range(14)]
    assert counts == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0]
    for e in (0, 4, 9, 3, 12, 1):  # any order: the state is a function of the epoch alone
        k = apply_freeze(model, s, e)
        assert k == frozen_count(s, e, len(stages))
        assert trainable(model) == {n for n, _ in model.named_parameters()} - {n for st in stages[:k] for n in st}
    # top stage first: at epoch 2 only the last stage and the head train
    apply_freeze(model, s, 2)
    assert trainable(model) == set(stages[-1]) | set(head_parameters(model))


def test_gradual_lrs_and_optimizer_holds_every_parameter():
    model, s = make("gradual", backbone_lr_scale=0.2)
    groups = param_groups(model, s, TrainSpec(lr=LR))
    lrs = lr_of(groups, model)
    head = set(head_parameters(model))
    assert set(lrs) == {n for n, _ in model.named_parameters()}
    assert all_approx([lrs[n] for n in head], LR) and all_approx([lrs[n] for n in lrs if n not in head], LR * 0.2)


def test_full_trains_everything_with_one_lr():
    model, s = make("full", backbone_lr_scale=0.1)  # backbone_lr_scale is for the other strategies
    assert apply_freeze(model, s, epoch=0) == 0
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    groups = param_groups(model, s, TrainSpec(lr=LR, weight_decay=0.05))
    assert set(lr_of(groups, model).values()) == {LR}
    # biases and norm weights get no weight decay, conv/linear weights do
    wd = {n: g["weight_decay"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert wd["fc.weight"] == 0.05 and wd["fc.bias"] == 0.0 and wd["conv1.0.weight"] == 0.05
    assert wd["conv1.1.weight"] == 0.0  # BatchNorm gamma


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_full_with_layer_decay_scales_lr_down_towards_the_stem(backbone):
    model, s = make("full", backbone=backbone, layer_decay=0.5)
    groups = param_groups(model, s, TrainSpec(lr=LR))
    lrs = lr_of(groups, model)
    assert set(lrs) == {n for n, _ in model.named_parameters()}
    head = set(head_parameters(model))
    assert {lrs[n] for n in head} == {LR}
    stages = stage_groups(model)
    per_stage = [max(lrs[n] for n in st) for st in stages]
    assert per_stage == sorted(per_stage) and per_stage[0] < per_stage[-1] < LR
    assert per_stage[0] == pytest.approx(LR * 0.5 ** len(stages))
    for g in groups:
        assert g["lr"] == pytest.approx(LR * g[LR_SCALE_KEY]) and "lr_scale" not in g


def test_cut_at_prunes_the_backbone_and_outputs_the_cut_stage():
    full = timm.create_model("test_resnet", num_classes=3)
    model, s = make("cut_at", cut_at=2)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    assert not any(n.startswith(("body.layer3", "body.layer4", "body.fc")) for n, _ in model.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, full.feature_info[2]["num_chs"], 4, 4)  # layer2: 48 channels at stride 8
    assert model(x).shape == (2, 3)
    # its stages and freezing work through the prefixed group matcher
    stages = stage_groups(model)
    assert len(stages) == 3 and stages[0][0].startswith("body.conv1")
    s2 = s.model_copy(update={"frozen_stages": 2})
    assert apply_freeze(model, s2, epoch=0) == 2
    assert trainable(model) == set(stages[2]) | {"classifier.weight", "classifier.bias"}
    lrs = lr_of(param_groups(model, s2, TrainSpec(lr=LR)), model)
    assert lrs["classifier.weight"] == LR and lrs["body.layer2.0.conv1.weight"] == pytest.approx(LR * 0.1)


@pytest.mark.parametrize("cut_at", [5, 12])
def test_cut_at_out_of_range_names_the_stages(cut_at):
    with pytest.raises(ValueError, match=rf"cut_at={cut_at}.*stages 0\.\.4 \(act1, layer1, layer2, layer3, layer4\)"):
        make("cut_at", cut_at=cut_at)


def test_a_bare_head_is_all_head_with_no_stages():
    head = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.GELU(), torch.nn.Linear(4, 3))
    s = ModelSpec(strategy="feature_extract")
    assert stage_groups(head) == [] and apply_freeze(head, s, epoch=0) == 0
    groups = param_groups(head, s, TrainSpec(lr=LR, weight_decay=0.05))
    assert set(lr_of(groups, head)) == {n for n, _ in head.named_parameters()}
    assert all(g["lr"] == LR for g in groups)
    decay = {n: g["weight_decay"] for g in groups for n, p in head.named_parameters()
             if any(p is q for q in g["params"])}
    assert decay == {"0.weight": 0.05, "0.bias": 0.0, "2.weight": 0.05, "2.bias": 0.0}


CONVENTION_CASES = [("finetune", {"backbone_lr_scale": 0.1}), ("gradual", {"backbone_lr_scale": 0.1}),
                    ("full", {"layer_decay": 0.5})]


def lrs_over_schedule(setup, total: int) -> list[list[float]]:
    """Each group's lr for every one of `total` optimizer updates (the lr that update uses), as kit.train steps."""
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in setup.optimizer.param_groups])
        setup.optimizer.step()
        setup.scheduler.step()
    return out


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
@pytest.mark.parametrize("warmup", [0.0, 1.0])
@pytest.mark.parametrize("strategy, extra", CONVENTION_CASES, ids=["finetune", "gradual", "layer_decay"])
def test_every_group_keeps_its_ratio_to_the_head_at_every_step(strategy, extra, warmup, scheduler):
    """One convention: a group's lr / the head's lr is its scale at every step of the whole schedule, warm-up
    included, and no scheduler sees timm's lr_scale key (which timm's schedulers would apply once more)."""
    model, s = make(strategy, **extra)
    train = TrainSpec(lr=LR, epochs=4, warmup_epochs=warmup, scheduler=scheduler)
    setup = _setup(model, s, train, n_batches=10, task=multiclass("abc"),
                   device=torch.device("cpu"), amp_dtype=None)
    groups = setup.optimizer.param_groups
    assert not any("lr_scale" in g for g in groups)
    scales = [g[LR_SCALE_KEY] for g in groups]
    assert len(set(scales)) > 1 and max(scales) == 1.0
    head = scales.index(1.0)
    steps = lrs_over_schedule(setup, total=40)
    for t, lrs in enumerate(steps):
        for lr, scale in zip(lrs, scales):
            assert lr == pytest.approx(lrs[head] * scale, rel=1e-12, abs=0), (t, scale)
    if strategy != "full":  # backbone_lr_scale 0.1: every backbone group at exactly 0.1 x the head
        assert {round(sc, 12) for sc in scales} == {1.0, 0.1}
    head_lrs = [lrs[head] for lrs in steps]
    assert max(head_lrs) <= LR * (1 + 1e-12)  # train.lr is the head's peak
    if scheduler == "onecycle":
        assert max(head_lrs) == pytest.approx(LR, rel=1e-2) and head_lrs[0] == pytest.approx(LR / 25)
    elif not warmup:
        assert head_lrs[0] == LR
    else:
        assert head_lrs[:10] == sorted(head_lrs[:10]) and head_lrs[0] == pytest.approx(LR * 1e-3)


@pytest.mark.parametrize("warmup", [0.0, 0.5, 1.0])
def test_cosine_keeps_timms_shape_for_the_head(warmup):
    """kit's cosine factor is timm's CosineLRScheduler arithmetic: recipes tuned before keep their lrs."""
    model, s = make("finetune", backbone_lr_scale=0.1)
    train = TrainSpec(lr=LR, epochs=4, warmup_epochs=warmup, scheduler="cosine")
    setup = _setup(model, s, train, n_batches=10, task=multiclass("abc"),
                   device=torch.device("cpu"), amp_dtype=None)
    head = [g[LR_SCALE_KEY] for g in setup.optimizer.param_groups].index(1.0)
    got = [lrs[head] for lrs in lrs_over_schedule(setup, total=40)]
    expected = reference_lrs(train, 10, range(40))
    assert got == pytest.approx(expected, rel=1e-9)
    assert cosine_factor(40, 40, 10) == cosine_factor(99, 40, 10) == pytest.approx(1e-3)


def test_no_scheduler_keeps_each_groups_lr():
    model, s = make("finetune", backbone_lr_scale=0.1)
    setup = _setup(model, s, TrainSpec(lr=LR, scheduler="none"), 10, multiclass("abc"), torch.device("cpu"), None)
    assert setup.scheduler is None
    assert all(g["lr"] == pytest.approx(LR * g[LR_SCALE_KEY]) for g in setup.optimizer.param_groups)
