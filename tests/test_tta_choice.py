"""The TTA rule (kit.choice.choose_tta: kit.choice's one rule with `none` the reference) and the paired noise it
measures (kit.metrics.paired_se)."""
import numpy as np
import pytest

import kit.metrics as M
from kit.choice import NOISE_SE as TTA_NOISE_SE, choose_tta
from kit.predictions import Predictions

N, C = 2000, 10


def _probs(y, correct, p_true_right, p_wrong_when_wrong, seed=0):
    """Probabilities whose argmax is y[i] where correct[i], else another class; the true class gets
    p_true_right on right rows and (1 - p_wrong_when_wrong) / (C - 1) on wrong rows."""
    rng = np.random.default_rng(seed)
    p = np.zeros((len(y), C))
    for i, (k, ok) in enumerate(zip(y, correct)):
        if ok:
            p[i] = (1 - p_true_right) / (C - 1)
            p[i, k] = p_true_right
        else:
            wrong = (k + 1 + rng.integers(0, C - 1)) % C
            p[i] = (1 - p_wrong_when_wrong) / (C - 1)
            p[i, wrong] = p_wrong_when_wrong
    return p


def _pred(y, probs, order=None):
    order = np.arange(len(y)) if order is None else order
    ids = np.array([f"{i:05d}" for i in range(len(y))])
    return Predictions(ids[order], probs[order], [str(c) for c in range(C)], y[order])


@pytest.fixture
def y():
    return np.random.default_rng(1).integers(0, C, N)


def _correct(n_right, start=0):
    c = np.zeros(N, bool)
    c[start:start + n_right] = True
    return c


def test_paired_se_from_rows_agrees_with_the_bootstrap_and_is_zero_for_the_same_predictions(y, monkeypatch):
    a = _probs(y, _correct(1855), 0.9, 0.9)
    b = _probs(y, _correct(1850, start=20), 0.8, 0.6, seed=1)
    assert M.paired_se("accuracy", y, a, a) == 0.0
    d = M._correct(y, a) - M._correct(y, b)
    assert M.paired_se("accuracy", y, a, b) == pytest.approx(np.std(d, ddof=1) / np.sqrt(N))
    analytic = M.paired_se("accuracy", y, a, b)
    accuracy = M.METRICS["accuracy"].fn
    monkeypatch.setitem(M.METRICS, "accuracy", M.Metric("accuracy", accuracy, True))  # no per-row terms
    boot = M.paired_se("accuracy", y, a, b)
    assert boot == M.paired_se("accuracy", y, a, b)  # seeded
    assert boot == pytest.approx(analytic, rel=0.2)
    assert M.paired_se("f1_macro", y, a, b) > 0


def test_a_mode_within_noise_on_accuracy_is_chosen_by_its_lower_log_loss(y):
    # none right on 5 rows more (of 2,000), but confidently wrong where it errs; hflip hedges
    none = _pred(y, _probs(y, _correct(1855), 0.9, 0.95))
    hflip = _pred(y, _probs(y, _correct(1850, start=20), 0.9, 0.5, seed=1), order=np.arange(N)[::-1])
    acc = {m: M.score("accuracy", p.labels, p.probs) for m, p in (("none", none), ("hflip", hflip))}
    assert acc["none"] - acc["hflip"] == pytest.approx(5 / N)
    choice = choose_tta({"none": none, "hflip": hflip}, "accuracy")
    assert choice.name == "hflip"
    assert "within 2 paired standard errors of none" in choice.why and "log_loss" in choice.why
    # log loss is then the metric itself: hflip beats the reference on it beyond the noise
    assert choose_tta({"none": none, "hflip": hflip}, "log_loss").name == "hflip"


def test_a_clear_lead_on_the_metric_wins_whatever_the_log_loss(y):
    none = _pred(y, _probs(y, _correct(1900), 0.9, 0.99))  # 150 rows more right, confidently wrong elsewhere
    hflip = _pred(y, _probs(y, _correct(1750, start=10), 0.9, 0.4, seed=1))
    assert M.score("log_loss", y, hflip.probs) < M.score("log_loss", y, none.probs)
    assert 0.075 > TTA_NOISE_SE * M.paired_se("accuracy", y, none.probs, hflip.probs)
    choice = choose_tta({"hflip": hflip, "none": none}, "accuracy")
    assert choice.name == "none" and choice.why == "none (the reference) scores best on out-of-fold accuracy"
    # the other way round, the clear lead replaces the reference
    choice = choose_tta({"none": hflip, "hflip": none}, "accuracy")
    assert choice.name == "hflip" and "more than 2 paired standard errors" in choice.why


def test_equal_modes_keep_none_and_a_fixed_mode_is_kept(y):
    p = _probs(y, _correct(1800), 0.9, 0.9)
    assert choose_tta({"hflip": _pred(y, p), "none": _pred(y, p)}, "accuracy").name == "none"
    assert choose_tta({"none": _pred(y, p)}, "f1_macro")[:2] == ("none", "the only TTA mode")
    assert choose_tta({"none": _pred(y, p)}, "accuracy", fixed="ten_crop").name == "ten_crop"


def test_f1_macro_is_sklearns_with_absent_and_never_predicted_classes():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(3)
    for n, c in ((50, 4), (300, 12), (7, 10)):
        y = rng.integers(0, c - 1, n)  # the last class never occurs
        p = rng.dirichlet(np.ones(c), n)
        p[:, [1, c - 1]] = 0  # class 1 is never predicted; the last neither occurs nor is predicted
        want = f1_score(y, p.argmax(1), average="macro", labels=np.arange(c), zero_division=0)
        assert M.score("f1_macro", y, p) == pytest.approx(want, abs=1e-12)


def test_accuracy_and_log_loss_are_sklearns():
    from sklearn.metrics import accuracy_score, log_loss
    rng = np.random.default_rng(4)
    for n, c, dtype in ((50, 4, np.float64), (300, 12, np.float32)):
        y = rng.integers(0, c, n)
        p = rng.dirichlet(np.ones(c), n).astype(dtype)
        p[0] = 0
        p[0, (y[0] + 1) % c] = 1  # certain and wrong: clipped at 1e-15
        assert M.score("accuracy", y, p) == accuracy_score(y, p.argmax(1))
        q = np.clip(p.astype(np.float64), 1e-15, 1)
        want = log_loss(y, q / q.sum(1, keepdims=True), labels=np.arange(c))
        assert M.score("log_loss", y, p) == pytest.approx(want, rel=1e-9)
