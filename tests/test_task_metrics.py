"""kit.metrics on every shape of the task contract (multiclass, binary, multilabel, ordinal, regression), each
metric against scikit-learn's definition on random data, and the paired standard error of each."""
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

import kit.metrics as M

sk = pytest.importorskip("sklearn.metrics")
N = 300


def _multiclass(rng, n=N, c=5):
    return rng.integers(0, c, n), rng.dirichlet(np.ones(c), n)


def _binary(rng, n=N):
    y = (rng.random(n) < 0.3).astype(np.int64)
    return y, np.clip(rng.random((n, 1)) * 0.6 + 0.4 * y[:, None], 0, 1)


def _multilabel(rng, n=N, k=6):
    y = (rng.random((n, k)) < [0.05, 0.1, 0.3, 0.5, 0.2, 0.4]).astype(np.int64)
    y[:20] = 0  # images with no tag at all
    p = np.clip(rng.random((n, k)) * 0.7 + 0.3 * y, 0, 1)
    p[10:30] = 0.1  # and images with no predicted tag (10..19: neither)
    return y, p


def _ordinal(rng, n=N):
    y = rng.integers(1, 6, n)  # grades 1..5
    return y, (y + rng.normal(0, 0.9, n))[:, None]


def _regression(rng, n=N):
    y = rng.normal(40, 10, n)
    return y, (y + rng.normal(0, 5, n))[:, None]


def test_multiclass_metrics_unchanged():
    rng = np.random.default_rng(0)
    y, p = _multiclass(rng)
    assert M.score("accuracy", y, p) == sk.accuracy_score(y, p.argmax(1))
    assert M.score("log_loss", y, p) == pytest.approx(sk.log_loss(y, p), rel=1e-9)
    assert M.score("f1_macro", y, p) == pytest.approx(sk.f1_score(y, p.argmax(1), average="macro"), abs=1e-12)
    assert M.score("f1_micro", y, p) == pytest.approx(sk.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert M.score("roc_auc", y, p) == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr"), abs=1e-10)
    assert M.score_all(y, p).keys() == {"accuracy", "log_loss", "f1_macro"}
    assert M.score("accuracy", y.astype(float), p) == M.score("accuracy", y, p)  # whole floats read as classes


def test_binary_metrics_are_sklearns():
    rng = np.random.default_rng(1)
    y, p = _binary(rng)
    p[:5, 0] = [0.0, 1.0, 0.5, 0.5, 0.5]  # certain (clipped at 1e-15) and exactly on the threshold
    s = p[:, 0]
    assert M.score("accuracy", y, p) == sk.accuracy_score(y, s >= 0.5)
    assert M.score("log_loss", y, p) == pytest.approx(sk.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15)), rel=1e-9)
    assert M.score("f1_macro", y, p) == pytest.approx(sk.f1_score(y, s >= 0.5), abs=1e-12)
    assert M.score("f1_micro", y, p) == pytest.approx(sk.f1_score(y, s >= 0.5), abs=1e-12)
    assert M.score("roc_auc", y, p) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-10)
    assert np.isnan(M.score("roc_auc", np.zeros(10, int), p[:10]))  # one class: undefined


@pytest.mark.parametrize("levels", [None, 5, 2])
def test_roc_auc_with_ties_is_sklearns(levels):
    rng = np.random.default_rng(2)
    for n in (7, 100, 1000):
        y = (rng.random(n) < 0.4).astype(np.int64)
        y[:2] = [0, 1]
        s = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels  # many ties
        assert M.score("roc_auc", y, s[:, None]) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-10)


def test_multilabel_metrics_are_sklearns():
    rng = np.random.default_rng(3)
    y, p = _multilabel(rng)
    pred = (p >= 0.5).astype(int)
    assert M.score("accuracy", y, p) == sk.accuracy_score(y, pred)
    want = np.mean([sk.log_loss(y[:, k], p[:, k], labels=[0, 1]) for k in range(y.shape[1])])
    assert M.score("log_loss", y, p) == pytest.approx(want, rel=1e-9)
    assert M.score("f1_macro", y, p) == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0),
                                                      abs=1e-12)
    assert M.score("f1_micro", y, p) == pytest.approx(sk.f1_score(y, pred, average="micro", zero_division=0),
                                                      abs=1e-12)
    assert M.score("f2_samples", y, p) == pytest.approx(
        sk.fbeta_score(y, pred, beta=2, average="samples", zero_division=0), abs=1e-12)
    assert M.fbeta(y, p, beta=0.5) == pytest.approx(
        sk.fbeta_score(y, pred, beta=0.5, average="samples", zero_division=0), abs=1e-12)
    assert M.score("roc_auc", y, p) == pytest.approx(sk.roc_auc_score(y, p, average="macro"), abs=1e-10)
    y[:, 0] = 0  # a label that never occurs: its AUC is undefined and skipped
    assert M.score("roc_auc", y, p) == pytest.approx(sk.roc_auc_score(y[:, 1:], p[:, 1:]), abs=1e-10)


def _competition_scorer():
    path = Path(__file__).resolve().parents[2] / "shared" / "competitions" / "fashion_tasks.py"
    if not path.is_file():
        pytest.skip(f"{path} not here")
    spec = importlib.util.spec_from_file_location("fashion_tasks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.f2_samples


def test_f2_samples_is_the_competitions_scorer():
    f2 = _competition_scorer()
    rng = np.random.default_rng(4)
    y, p = _multilabel(rng)
    tags = np.array([f"t{k}" for k in range(y.shape[1])])
    true = [" ".join(tags[r == 1]) for r in y]
    pred = [" ".join(tags[r >= 0.5]) for r in p]
    assert M.score("f2_samples", y, p) == pytest.approx(f2(true, pred), abs=1e-12)
    assert M.METRICS["f2_samples"].rows(y, p)[10:20].tolist() == [0.0] * 10  # neither true nor predicted: 0


def test_qwk_is_sklearns():
    rng = np.random.default_rng(5)
    y, p = _ordinal(rng)
    pred = np.floor(p[:, 0] + 0.5).astype(int)
    assert M.score("qwk", y, p) == pytest.approx(sk.cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    assert M.score("accuracy", y, p) == sk.accuracy_score(y, pred)
    # halves round up (floor(p + 0.5), not half-to-even), and labels missing in between
    y2, s2 = np.array([0, 1, 2, 3, 5, 5]), np.array([0.5, 1.5, 2.5, 2.49, 4.6, 7.0])
    want = sk.cohen_kappa_score(y2, [1, 2, 3, 2, 5, 7], weights="quadratic")
    assert M.score("qwk", y2, s2[:, None]) == pytest.approx(want, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(M.score("qwk", np.ones(5, int), np.ones((5, 1))))


def test_rmse_and_mae_keep_real_targets():
    rng = np.random.default_rng(6)
    y, p = _regression(rng)
    assert M.score("rmse", y, p) == pytest.approx(np.sqrt(sk.mean_squared_error(y, p[:, 0])), rel=1e-12)
    assert M.score("mae", y, p) == pytest.approx(sk.mean_absolute_error(y, p[:, 0]), rel=1e-12)
    assert M.score("mae", y.tolist(), p) == M.score("mae", y, p)  # float targets are not cast to int


def test_directions():
    lower = {"log_loss", "rmse", "mae"}
    for name, m in M.METRICS.items():
        assert m.higher_is_better == (name not in lower), name
    assert M.better("rmse", 1.0, 2.0) and M.better("qwk", 0.8, 0.7)


@pytest.mark.parametrize("name,shape", [("qwk", "multiclass"), ("rmse", "multiclass"), ("mae", "multilabel"),
                                        ("f2_samples", "binary"), ("f2_samples", "multiclass"),
                                        ("log_loss", "ordinal"), ("accuracy", "regression")])
def test_unsupported_shapes_raise_a_clear_error(name, shape):
    y, p = {"multiclass": _multiclass, "multilabel": _multilabel, "binary": _binary, "ordinal": _ordinal,
            "regression": _regression}[shape](np.random.default_rng(7), 20)
    with pytest.raises(ValueError, match=name.split("_")[0]):
        M.score(name, y, p)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        M.score("f1_micro", np.zeros((4, 3), int), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        M.score("rmse", np.zeros(4), np.zeros(4))


SHAPES = {"multiclass": (_multiclass, ["accuracy", "log_loss", "f1_macro", "f1_micro", "roc_auc"]),
          "binary": (_binary, ["accuracy", "log_loss", "f1_macro", "f1_micro", "roc_auc"]),
          "multilabel": (_multilabel, ["accuracy", "log_loss", "f1_macro", "f1_micro", "f2_samples", "roc_auc"]),
          "ordinal": (_ordinal, ["accuracy", "qwk", "rmse", "mae"]),
          "regression": (_regression, ["rmse", "mae"])}


@pytest.mark.parametrize("shape", SHAPES)
def test_paired_se_for_every_metric(shape):
    make, names = SHAPES[shape]
    rng = np.random.default_rng(8)
    y, a = make(rng)
    b = np.clip(a + rng.normal(0, 0.15, a.shape), 0, None)
    if shape in ("multiclass",):
        b /= b.sum(1, keepdims=True)
    elif shape in ("binary", "multilabel"):
        b = np.clip(b, 0, 1)
    for name in names:
        m = M.get_metric(name)
        if m.rows is not None:  # the rows' mean is the metric
            assert np.mean(m.rows(y, a)) == pytest.approx(m.fn(y, a), rel=1e-12), name
        se = M.paired_se(name, y, a, b)
        assert np.isfinite(se) and se > 0, name
        assert M.paired_se(name, y, a, a) == 0.0, name
        assert M.paired_se(name, y, a, b) == se, name  # seeded
