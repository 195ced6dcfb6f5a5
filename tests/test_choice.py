"""kit.choice: the one rule for automatic choices (TTA modes, blends): the reference unless beaten beyond the
noise of the rows that compare them."""
from __future__ import annotations

import numpy as np
import pytest

from kit import ensemble as E
from kit import metrics as M
from kit.choice import NOISE_SE, choose, choose_tta
from kit.predictions import Predictions


def _probs(y, correct, rng, n_classes=3, confidence=0.8):
    """Rows whose argmax is the label where `correct`, another class elsewhere, with `confidence` on the argmax."""
    n = len(y)
    top = np.where(correct, y, (y + 1) % n_classes)
    p = np.full((n, n_classes), (1 - confidence) / (n_classes - 1))
    p[np.arange(n), top] = confidence
    return p


def test_a_one_row_lead_keeps_the_reference_and_says_by_how_much():
    """The quickstart's case: the best single member ahead of the mean by one image of 288."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 288)
    right = rng.random(288) < 0.97
    mean = _probs(y, right, rng)
    best = mean.copy()
    wrong = np.flatnonzero(~right)[0]  # the single member gets one more image right
    best[wrong] = _probs(y[[wrong]], [True], rng)
    mean_acc, best_acc = M.score("accuracy", y, mean), M.score("accuracy", y, best)
    assert best_acc - mean_acc == pytest.approx(1 / 288)
    c = choose({"best": best, "mean": mean}, y, "accuracy", "mean", what="blend", secondary=None)
    assert c.name == "mean" and "mean (the reference) kept" in c.why and "best leads by 0.0035" in c.why
    # the strictly best score would have kept the single member
    assert E.choose_method({"best": E.MethodResult("best", np.array([1.0, 0]), best_acc, best_acc, nested_probs=best),
                            "mean": E.MethodResult("mean", np.array([.5, .5]), mean_acc, mean_acc, nested_probs=mean)},
                           "accuracy", y).name == "mean"


def test_a_lead_beyond_the_margin_replaces_the_reference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    ref = _probs(y, rng.random(400) < 0.6, rng)
    better = _probs(y, rng.random(400) < 0.9, rng)
    c = choose({"mean": ref, "weights": better}, y, "accuracy", "mean")
    assert c.name == "weights" and c.lead > NOISE_SE * c.se
    assert c.why.startswith("weights beats mean (the reference) by")


def test_log_loss_decides_where_the_metric_cannot():
    """Same argmax everywhere (equal accuracy), the candidate's probabilities closer to the labels on every row:
    the metric ties; with log loss as the second score (TTA's setting) it decides, without it (blends') the
    reference stays."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    right = rng.random(300) < 0.8
    none = _probs(y, right, rng, confidence=0.6)
    hflip = _probs(y, right, rng, confidence=0.6)
    hflip[np.arange(300), y] += np.where(right, 0.2, 0.05)
    hflip /= hflip.sum(1, keepdims=True)
    assert M.score("accuracy", y, none) == M.score("accuracy", y, hflip)
    c = choose({"none": none, "hflip": hflip}, y, "accuracy", "none", what="TTA mode", secondary="log_loss")
    assert c.name == "hflip" and "the best log_loss of those" in c.why
    assert choose_tta({"none": Predictions(np.arange(300).astype(str), none, ("a", "b", "c"), y),
                       "hflip": Predictions(np.arange(300).astype(str), hflip, ("a", "b", "c"), y)},
                      "accuracy").name == "hflip"  # TTA's setting
    assert choose({"none": none, "hflip": hflip}, y, "accuracy", "none").name == "none"  # blends': no second score


def test_identical_candidates_and_a_single_candidate_keep_the_reference():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 50)
    p = _probs(y, rng.random(50) < 0.7, rng)
    assert choose({"none": p, "hflip": p.copy()}, y, "accuracy", "none").name == "none"
    assert choose({"none": p}, y, "accuracy", "none", what="TTA mode").why == "the only TTA mode"
    with pytest.raises(ValueError, match="reference"):
        choose({"a": p}, y, "accuracy", "mean")


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "f1_macro"])
def test_a_clearly_worse_candidate_is_never_chosen(metric):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    good = _probs(y, rng.random(300) < 0.9, rng)
    bad = _probs(y, rng.random(300) < 0.4, rng)
    assert choose({"mean": good, "rank": bad}, y, metric, "mean").name == "mean"
    assert choose({"mean": bad, "rank": good}, y, metric, "mean").name == "rank"


def test_choose_tta_puts_none_first_and_honours_a_fixed_mode():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    ids = np.array([f"i{k}" for k in range(120)])
    p = _probs(y, rng.random(120) < 0.8, rng)
    oofs = {"hflip": Predictions(ids[::-1], p[::-1], ("a", "b", "c"), y[::-1]),  # another row order
            "none": Predictions(ids, p, ("a", "b", "c"), y)}
    assert choose_tta(oofs, "accuracy").name == "none"
    assert choose_tta(oofs, "accuracy", fixed="hflip") == ("hflip", "tta.mode", 0.0, 0.0)


def test_choose_method_falls_back_to_the_first_method_without_mean():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 200)
    p = _probs(y, rng.random(200) < 0.8, rng)
    res = {"rank": E.MethodResult("rank", np.ones(2) / 2, 0.8, 0.8, nested_probs=p),
           "gmean": E.MethodResult("gmean", np.ones(2) / 2, 0.8, 0.8, nested_probs=p)}
    assert E.choose_method(res, "accuracy", y).name == "rank"
