"""kit.features: the embedding cache (keys, hits and misses, interrupted extractions), the four heads, and
feature_extract members trained through kit.member_train.train_member. Random-init test_resnet at 32 px, CPU."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import class_image, data_config
from kit import features as F
from kit.data.sources import ImageTable
from kit.context import prepare_run
from kit.member_predict import load_member_model, predict_member
from kit.member_train import train_member
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
    return data_config(model, AugmentSpec(**{"input_size": 32, **augment}))


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
    key = F.embedding_key(BACKBONE, f"none:{F.model_digest(model)}", None, cfg, F.image_set_digest(table))
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
def test_each_head_learns_the_bars(head, tmp_path):
    table, model = bars_table(per_class=20), backbone()
    x = np.asarray(extract(model, table, cfg_of(model)).views["none"])
    train, val = np.arange(len(table)) % 4 != 0, np.arange(len(table)) % 4 == 0  # 45 / 15 images
    y = table.labels
    if head in ("linear", "mlp"):
        torch.manual_seed(0)
        h = F.create_head(ModelSpec(head=head, head_hidden=32), x.shape[1], 3)
        spec = TrainSpec(epochs=20, batch_size=16, lr=1e-2, weight_decay=1e-4, warmup_epochs=0, early_stopping=5)
        history = F.fit_torch_head(h, x[train], y[train], x[val], y[val], spec, tmp_path / "head")
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


def test_torch_heads_train_through_the_one_loop(monkeypatch, tmp_path):
    """fit_torch_head is kit.train.fit over (embedding, label, row) batches; an interrupted head resumes to
    the weights of an uninterrupted one."""
    import kit.train
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.normal(size=(60, 8)) * 5 + 3 + y[:, None]).astype(np.float32)
    spec = TrainSpec(epochs=4, batch_size=16, lr=1e-2, warmup_epochs=1, seed=3)
    calls, real = [], kit.train.fit

    def spy(model, train_loader, val_loader, val_labels, *args, **kwargs):
        calls.append([tuple(t.shape) for t in next(iter(train_loader))])
        return real(model, train_loader, val_loader, val_labels, *args, **kwargs)

    monkeypatch.setattr(kit.train, "fit", spy)
    heads = []
    for out, hook in (("ref", None), ("cut", "stop")):
        torch.manual_seed(0)
        heads.append(F.create_head(ModelSpec(head="linear"), 8, 3))

        def stop(epoch, row):
            if epoch == 1:
                raise KeyboardInterrupt
        if hook:
            with pytest.raises(KeyboardInterrupt):
                F.fit_torch_head(heads[-1], x[:45], y[:45], x[45:], y[45:], spec, tmp_path / out, on_epoch_end=stop)
            torch.manual_seed(0)
            heads[-1] = F.create_head(ModelSpec(head="linear"), 8, 3)
            history = F.fit_torch_head(heads[-1], x[:45], y[:45], x[45:], y[45:], spec, tmp_path / out, resume=True)
        else:
            ref = F.fit_torch_head(heads[-1], x[:45], y[:45], x[45:], y[45:], spec, tmp_path / out)
    assert calls[0] == [(16, 8), (16,), (16,)]  # the image loaders' (x, y, row) contract
    assert (tmp_path / "ref" / "last.pt").is_file() and len(calls) == 3
    assert [r["val_log_loss"] for r in history.epochs] == [r["val_log_loss"] for r in ref.epochs]
    for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()):
        assert torch.equal(a, b)
    # the head takes raw embeddings: its probabilities are those of the best epoch (standardisation folded in)
    probs = F.head_proba(heads[0], torch.from_numpy(x[45:]))
    assert ref.best_score == pytest.approx(np.mean(probs.argmax(1) == y[45:]))


def test_embedding_loader_order_follows_its_generator():
    x, y = np.arange(20, dtype=np.float32)[:, None], np.arange(20) % 2
    loader = F.embedding_loader(x, y, 8, shuffle=True, seed=1)
    assert len(loader) == 3
    first = torch.cat([row for _, _, row in loader])
    loader.generator.manual_seed(1)
    assert torch.equal(torch.cat([row for _, _, row in loader]), first)  # what fit's per-epoch reseed relies on
    assert sorted(first.tolist()) == list(range(20)) and first.tolist() != list(range(20))
    xb, yb, rows = next(iter(loader))
    assert torch.equal(xb[:, 0], rows.float()) and torch.equal(yb, rows % 2)
    ordered = F.embedding_loader(x, y, 8, shuffle=False, seed=1)
    assert torch.cat([row for _, _, row in ordered]).tolist() == list(range(20))


def test_temperature_calibrates_an_overconfident_head_without_changing_its_predictions():
    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    x = (rng.normal(size=(600, 5)) + 1.2 * np.eye(3, 5)[y]).astype(np.float32)
    head = torch.nn.Linear(5, 3)
    with torch.no_grad():  # a sensible direction at 8x the right scale: overconfident
        head.weight.copy_(torch.eye(3, 5) * 8 * 1.2)
        head.bias.zero_()
    before = F.head_proba(head, torch.from_numpy(x[300:]))
    t = F.fit_temperature(head, x[:300], y[:300])
    after = F.head_proba(head, torch.from_numpy(x[300:]))
    assert 3 < t < 20
    assert np.array_equal(before.argmax(1), after.argmax(1))
    from kit import metrics as M
    assert M.score("log_loss", y[300:], after) < 0.8 * M.score("log_loss", y[300:], before)
    assert F.fit_temperature(head, x[:0], y[:0]) == 1.0


def test_calibration_rows_are_held_out_training_images():
    labels = np.arange(100) % 4
    fit, cal = F.calibration_split(labels, seed=0)
    assert len(cal) == 15 and not set(fit) & set(cal) and len(fit) + len(cal) == 100
    assert sorted(np.bincount(labels[cal])) == [3, 4, 4, 4]  # stratified
    again, other = F.calibration_split(labels, seed=0), F.calibration_split(labels, seed=1)
    assert np.array_equal(again[1], cal) and not np.array_equal(other[1], cal)
    fit, cal = F.calibration_split(np.array([0, 1, 1, 2, 2, 2]), seed=0)  # class 0 has one image: none held out
    assert len(cal) == 0 and len(fit) == 6


def test_c_is_chosen_by_inner_cross_validation_on_log_loss():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 200)) + 0.8 * np.eye(3, 200)[y]  # 200 dimensions, 60 rows: C=1 overfits
    c, losses = F.choose_c("logreg", 1.0, x, y, seed=0)
    assert sorted(losses) == pytest.approx([1.0 * f for f in F.C_GRID])
    assert losses[c] == min(losses.values()) and c < 1.0
    assert F.fitted_c(F.fit_sklearn_head("logreg", 1.0, x, y)) == c
    assert F.fitted_c(F.fit_sklearn_head("logreg", 1.0, x, y, search=False)) == 1.0
    assert F.choose_c("svm", 2.0, x[:4], np.array([0, 1, 1, 2])) == (2.0, {})  # too few rows to search


def test_inner_folds_keep_an_images_views_together():
    from kit.features._heads import _inner_splits
    y = np.tile(np.arange(30) % 3, 2)
    groups = np.tile(np.arange(30), 2)  # row i and row i + 30 are two views of image i
    splits = _inner_splits(y, groups, seed=0)
    assert len(splits) == 3
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


def test_svm_head_file_is_skops_and_loads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = rng.normal(size=(30, 5)) + y[:, None]
    pipe = F.fit_sklearn_head("svm", 1.0, x, y)
    path = F.save_sklearn_head(pipe, tmp_path / F.HEAD_FILE)
    import zipfile
    assert zipfile.is_zipfile(path)  # skops' format, not a pickle
    again = F.load_sklearn_head(path)
    np.testing.assert_array_equal(again.predict_proba(x.astype(np.float32)), pipe.predict_proba(x.astype(np.float32)))


@pytest.mark.parametrize("head", ["linear", "logreg", "svm"])
def test_a_feature_constant_on_the_training_rows_cannot_swamp_new_images(head, tmp_path):
    """Pooled features that never fire on the training images (std ~0) but do on a new one: standardising by
    their std made z ~ 1e5 and such images' predictions arbitrary; embedding_scale floors the scale."""
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = (rng.normal(size=(120, 6)) + 2.5 * np.eye(3, 6)[y]).astype(np.float32)
    x[:90, 5] = rng.normal(size=90) * 1e-5  # a unit that (nearly) never fires on the 90 training images
    x[90:, 5] = 0.3  # ... and fires on every new one
    mean, scale = F.embedding_scale(x[:90])
    assert np.abs((x[90:] - mean) / scale).max() < 10
    if head == "linear":
        torch.manual_seed(0)
        h = F.create_head(ModelSpec(head="linear"), 6, 3)
        F.fit_torch_head(h, x[:75], y[:75], x[75:90], y[75:90], TrainSpec(epochs=30, batch_size=16, lr=0.1,
                         warmup_epochs=0), tmp_path / "head")
        probs = F.head_proba(h, torch.from_numpy(x[90:]))
    else:
        probs = F.sklearn_proba(F.fit_sklearn_head(head, 1.0, x[:90], y[:90]), x[90:], 3)
    from kit import metrics as M
    assert M.score("accuracy", y[90:], probs) >= 0.8 and M.score("log_loss", y[90:], probs) < 0.6


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
    first, second = [m for m in ctx.plan.members if m.fold == 0][:2]
    record = train_member(ctx, first)
    out = member_dir(ctx.run_dir, first.name)
    assert json.loads((out / "done.json").read_text())["strategy"] == "feature_extract"
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()
    assert (out / F.HEAD_FILE).is_file() == (head == "svm")  # logreg is a linear layer in best.pt
    assert not list(out.glob("*.pkl")) and not (out / "head_training").exists()
    torch.load(out / "best.pt", weights_only=True)
    assert set(record["scores"]) == set(MODES)
    info = json.loads((out / "features.json").read_text())
    assert info["extracted"] == list(F.feature_views(recipe.model.head_views))
    n_train = int(np.sum(ctx.folds != 0))
    assert info["train_rows"] + recipe.model.head_views * info["calibration_images"] == \
        recipe.model.head_views * n_train
    if head in ("linear", "mlp"):  # a temperature from held-out training images (never the validation fold)
        assert info["calibration_images"] == round(n_train * F.CALIBRATION_FRACTION) and info["temperature"] > 0
    else:
        assert info["calibration_images"] == 0 and info["head_c"] in [1.0 * f for f in F.C_GRID]
    for split in ("oof", "test"):
        for mode in MODES:
            assert pred_path(ctx.run_dir, first.name, split, mode).is_file()
    oof = load_predictions(pred_path(ctx.run_dir, first.name, "oof", "none"))
    history = pd.read_csv(out / "history.csv")
    # the installed head predicts images as it scored their cached embeddings
    assert record["scores"]["none"]["accuracy"] == pytest.approx(history["val_accuracy"].max(), abs=1e-6)
    assert record["scores"]["none"]["accuracy"] >= 0.5  # 3 classes, 6 validation images; chance 1/3
    if head == "logreg":  # another seed with weights none is another random backbone: its own embeddings
        train_member(ctx, second)
        assert json.loads((member_dir(ctx.run_dir, second.name) / "features.json").read_text())["extracted"] == \
            ["none"]
    # the saved member loads back into its architecture and predicts as before
    model, cfg, channels_last = load_member_model(ctx, first, torch.device("cpu"))
    scores = predict_member(ctx, first, model, cfg, torch.device("cpu"), channels_last)
    assert scores["none"]["accuracy"] == pytest.approx(record["scores"]["none"]["accuracy"])
    np.testing.assert_allclose(load_predictions(pred_path(ctx.run_dir, first.name, "oof", "none")).probs,
                               oof.probs, atol=1e-5)



def test_random_init_backbones_do_not_share_cached_embeddings(cache_dir):
    """weights: none names no weights: two random inits of one architecture are different feature extractors."""
    table = bars_table(per_class=4)
    a, b = backbone(seed=0), backbone(seed=1)
    cfg = cfg_of(a)
    first, second = extract(a, table, cfg), extract(b, table, cfg)
    assert second.computed == ("none",)  # not a cache hit on the other init's entry
    assert not np.allclose(first.views["none"], second.views["none"])
    assert extract(a, table, cfg).computed == ()  # the same init again is a hit
