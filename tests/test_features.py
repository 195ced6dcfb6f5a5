"""kit.features: the embedding cache (keys, hits and misses, interrupted extractions), the four heads, and
feature_extract members trained through kit.members.train_member. Random-init test_resnet at 32 px, CPU."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import class_image
from kit import features as F
from kit.data import resolve_data_config
from kit.data.sources import ImageTable
from kit.members import expand_members, load_member_model, predict_member, prepare_run, train_member
from kit.models.backbone import CutBackbone
from kit.predictions import load_predictions
from kit.recipe import AugmentSpec, ModelSpec, RecipeError, TrainSpec, recipe_from_dict
from kit.rundir import member_dir, pred_path

BACKBONE = "test_resnet"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "kitcache"))
    return tmp_path / "kitcache" / "embeddings"


def bars_table(per_class=20, seed=0) -> ImageTable:
    """conftest's class-dependent bars (3 classes), in memory."""
    rng = np.random.default_rng(seed)
    labels = np.arange(3 * per_class) % 3
    items = [class_image(int(k), rng) for k in labels]
    return ImageTable(np.array([f"b{i:03d}" for i in range(len(labels))]), items, labels, ("a", "b", "c"))


def backbone(cut_at=None, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(BACKBONE, pretrained=False, num_classes=3)
    return CutBackbone(model, cut_at, 3) if cut_at is not None else model


def cfg_of(model, **augment):
    return resolve_data_config(model, AugmentSpec(**{"input_size": 32, **augment}))


def extract(model, table, cfg, cut_at=None, **kw):
    return F.cached_embeddings(model, table, cfg, backbone=BACKBONE, weights="none", cut_at=cut_at,
                               batch_size=16, **kw)


# ---------------------------------------------------------------- keys, hits, misses

def test_key_changes_with_every_input():
    cfg = {"input_size": 32, "crop_pct": 0.9, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    base = dict(backbone=BACKBONE, weights="none", cut_at=None, cfg=cfg, images="abc", view="none")
    key = F.embedding_key(**base)
    assert key == F.embedding_key(**base) and len(key) == 64
    variants = [dict(backbone="test_efficientnet"), dict(weights="file:0123"), dict(cut_at=2), dict(images="abd"),
                dict(view="hflip"), dict(precision="bfloat16")]
    variants += [dict(cfg={**cfg, k: v}) for k, v in (("input_size", 48), ("crop_pct", 1.0), ("mean", (0.4,) * 3),
                                                       ("std", (0.2,) * 3), ("interpolation", "bicubic"))]
    keys = {F.embedding_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_weights_and_image_set_descriptions(tmp_path, imagefolder_spec):
    from kit.data import load_sources
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert F.describe_weights(BACKBONE, "none") == "none"
    assert F.describe_weights(BACKBONE, str(a)) != F.describe_weights(BACKBONE, str(b))
    assert F.describe_weights(BACKBONE, str(a)).startswith("file:")

    table = bars_table(per_class=2)
    d = F.image_set_digest(table)
    assert d == F.image_set_digest(bars_table(per_class=2))
    changed = [np.array(x) for x in table.items]
    changed[3][0, 0, 0] ^= 1  # one pixel
    assert F.image_set_digest(ImageTable(table.ids, changed, table.labels, table.classes)) != d
    assert F.image_set_digest(ImageTable(table.ids[::-1].copy(), table.items, table.labels, table.classes)) != d

    files = load_sources(imagefolder_spec).train
    d = F.image_set_digest(files)
    path = files.items[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, touched: a different image set
    assert F.image_set_digest(files) != d


def test_cache_hits_and_misses(cache_dir):
    table, model = bars_table(per_class=4), backbone()
    cfg = cfg_of(model)
    first = extract(model, table, cfg)
    assert first.computed == ("none",) and first.views["none"].shape == (12, model.num_features)
    again = extract(model, table, cfg)
    assert again.computed == () and again.keys == first.keys
    np.testing.assert_array_equal(again.views["none"], first.views["none"])
    # the embeddings are the model's pooled features of the eval transform, in table order
    from kit.data import ImageDataset, create_eval_transform
    ds = ImageDataset(table, np.arange(len(table)), create_eval_transform(cfg))
    with torch.inference_mode():
        direct = F.pooled_features(model.eval(), torch.stack([ds[i][0] for i in range(len(ds))])).numpy()
    np.testing.assert_allclose(first.views["none"], direct, rtol=1e-4, atol=1e-5)
    # each input of the key misses
    assert extract(model, table, cfg_of(model, input_size=40)).computed == ("none",)
    assert extract(model, table, cfg_of(model, crop_pct=1.0)).computed == ("none",)
    assert extract(backbone(cut_at=2), table, cfg, cut_at=2).computed == ("none",)
    assert extract(model, bars_table(per_class=4, seed=1), cfg).computed == ("none",)
    # a new view is computed alone; the un-augmented one is still a hit
    views = extract(model, table, cfg, views=("none", "hflip"))
    assert views.computed == ("hflip",)
    with torch.inference_mode():
        flipped = F.pooled_features(model, torch.stack([ds[i][0] for i in range(len(ds))]).flip(-1)).numpy()
    np.testing.assert_allclose(views.views["hflip"], flipped, rtol=1e-4, atol=1e-5)
    entries = [p for p in cache_dir.iterdir()]
    assert len(entries) == 6 and all((p / "complete").is_file() and (p / "meta.json").is_file() for p in entries)


def test_interrupted_extraction_is_never_read(cache_dir):
    table, model = bars_table(per_class=4), backbone()
    cfg = cfg_of(model)

    def failing_loader():
        x = torch.randn(4, 3, 32, 32)
        yield x, torch.zeros(4), torch.arange(4)
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        extract(model, table, cfg, loader=failing_loader())
    assert list(cache_dir.iterdir()) == []  # the temporary folder went too
    # a half-written entry in place (no `complete` marker: copied by hand, killed writer) is not read
    key = F.embedding_key(BACKBONE, "none", None, cfg, F.image_set_digest(table))
    (cache_dir / key).mkdir()
    np.save(cache_dir / key / "embeddings.npy", np.zeros((len(table), model.num_features), np.float32))
    fresh = extract(model, table, cfg)
    assert fresh.computed == ("none",) and (cache_dir / key / "complete").is_file()
    assert np.abs(fresh.views["none"]).sum() > 0
    # a loader that yields fewer rows than the table is an error, not an entry
    short = iter([(torch.randn(4, 3, 32, 32), torch.zeros(4), torch.arange(4))])
    with pytest.raises(RuntimeError, match="yielded 4 rows, the table has 12"):
        extract(model, table, cfg_of(model, input_size=40), loader=short)
    assert len(list(cache_dir.iterdir())) == 1


def test_head_views_are_bounded():
    assert F.feature_views(1) == ("none",) and F.feature_views(2) == ("none", "hflip")
    with pytest.raises(RecipeError, match="head_views=5"):
        F.feature_views(5)


# ---------------------------------------------------------------- heads

@pytest.mark.parametrize("head", ["linear", "mlp", "logreg", "svm"])
def test_each_head_learns_the_bars(head):
    table, model = bars_table(per_class=20), backbone()
    x = np.asarray(extract(model, table, cfg_of(model)).views["none"])
    train, val = np.arange(len(table)) % 4 != 0, np.arange(len(table)) % 4 == 0  # 45 / 15 images
    y = table.labels
    if head in ("linear", "mlp"):
        torch.manual_seed(0)
        h = F.create_head(ModelSpec(head=head, head_hidden=32), x.shape[1], 3)
        spec = TrainSpec(epochs=20, batch_size=16, lr=1e-2, weight_decay=1e-4, warmup_epochs=0, early_stopping=5)
        history = F.fit_torch_head(h, x[train], y[train], x[val], y[val], spec)
        probs = F.head_proba(h, torch.from_numpy(x[val]))
        assert history.best_score == pytest.approx(np.mean(probs.argmax(1) == y[val]))  # ends at its best epoch
    else:
        probs = F.sklearn_proba(F.fit_sklearn_head(head, 1.0, x[train], y[train]), x[val], 3)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(probs.argmax(1) == y[val]) >= 0.8  # chance: 1/3


@pytest.mark.parametrize("classes", [[0, 1, 2, 3], [0, 2], [1, 3]])
def test_logreg_as_one_linear_layer_is_exact(classes):
    rng = np.random.default_rng(0)
    y = np.array(classes * 10)
    x = rng.normal(size=(len(y), 6)) * 3 + 5 + y[:, None]
    pipe = F.fit_sklearn_head("logreg", 0.5, x, y)
    probs = torch.softmax(F.logreg_as_linear(pipe, 4)(torch.from_numpy(x).float()), 1).detach().numpy()
    expected = np.zeros((len(y), 4))
    expected[:, pipe.classes_] = pipe.predict_proba(x.astype(np.float32))
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_svm_head_returns_log_probabilities():
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = rng.normal(size=(30, 5)) + y[:, None]
    pipe = F.fit_sklearn_head("svm", 1.0, x, y)
    logits = F.SklearnHead(pipe, 3)(torch.from_numpy(x).float())
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), pipe.predict_proba(x.astype(np.float32)), atol=1e-5)
    with pytest.raises(RecipeError, match="at least 2 training images"):
        F.fit_sklearn_head("svm", 1.0, x[:4], np.array([0, 1, 1, 2]))


# ---------------------------------------------------------------- members

MODES = ["none", "hflip"]


def member_recipe(tmp_path, data_spec, **model):
    return recipe_from_dict({
        "name": "fx", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "data": {**data_spec.model_dump(), "num_workers": 0},
        "augment": {"input_size": 32},
        "model": {"backbone": BACKBONE, "weights": "none", "strategy": "feature_extract", "channels_last": False,
                  "head_hidden": 32, **model},
        "train": {"epochs": 10, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-4, "warmup_epochs": 0},
        "tta": {"modes": MODES},
        "ensemble": {"seeds": [0, 1]},
    })


@pytest.mark.parametrize("head,extra", [("linear", {}), ("mlp", {}), ("logreg", {}), ("svm", {}),
                                        ("linear", {"cut_at": 2, "head_views": 2})])
def test_feature_extract_member(tmp_path, kaggle_spec, head, extra):
    recipe = member_recipe(tmp_path, kaggle_spec, head=head, **extra)
    ctx = prepare_run(recipe)
    first, second = expand_members(recipe, [0])
    record = train_member(ctx, first)
    out = member_dir(ctx.run_dir, first.name)
    assert json.loads((out / "done.json").read_text())["strategy"] == "feature_extract"
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()
    assert (out / F.HEAD_FILE).is_file() == (head in ("logreg", "svm"))
    assert set(record["scores"]) == set(MODES)
    info = json.loads((out / "features.json").read_text())
    assert info["extracted"] == list(F.feature_views(recipe.model.head_views))
    assert info["train_rows"] == recipe.model.head_views * int(np.sum(ctx.folds != 0))
    for split in ("oof", "test"):
        for mode in MODES:
            assert pred_path(ctx.run_dir, first.name, split, mode).is_file()
    oof = load_predictions(pred_path(ctx.run_dir, first.name, "oof", "none"))
    history = pd.read_csv(out / "history.csv")
    # the installed head predicts images as it scored their cached embeddings
    assert record["scores"]["none"]["accuracy"] == pytest.approx(history["val_accuracy"].max(), abs=1e-6)
    assert record["scores"]["none"]["accuracy"] >= 0.5  # 3 classes, 6 validation images; chance 1/3
    if head == "logreg":  # another seed (or head, or trial) reuses the embeddings
        train_member(ctx, second)
        assert json.loads((member_dir(ctx.run_dir, second.name) / "features.json").read_text())["extracted"] == []
    # the saved member loads back into its architecture and predicts as before
    model, cfg = reload(ctx, first)
    scores = predict_member(ctx, first, model, cfg, torch.device("cpu"), False)
    assert scores["none"]["accuracy"] == pytest.approx(record["scores"]["none"]["accuracy"])
    np.testing.assert_allclose(load_predictions(pred_path(ctx.run_dir, first.name, "oof", "none")).probs,
                               oof.probs, atol=1e-5)


def reload(ctx, member):
    """load_member_model, with kit.features.restore_member_model applied where kit.members does not call it yet."""
    import inspect
    if "restore_member_model" in inspect.getsource(load_member_model):
        model, cfg, _ = load_member_model(ctx, member, torch.device("cpu"))
        return model, cfg
    from kit.models.backbone import create_model
    spec = member.recipe.model.model_copy(update={"weights": "none"})
    model, _ = create_model(spec, len(ctx.sources.train.classes))
    model = F.restore_member_model(model, spec, member_dir(ctx.run_dir, member.name))
    model.load_state_dict(torch.load(member_dir(ctx.run_dir, member.name) / "best.pt", weights_only=True)["model"])
    return model, resolve_data_config(model, member.recipe.augment)
