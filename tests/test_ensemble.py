import subprocess
import sys

import numpy as np
import pytest

from kit import ensemble
from kit.metrics import score
from kit.predictions import Predictions

N, C = 300, 4


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labels(seed=0, n=N):
    return np.random.default_rng(seed).integers(0, C, size=n)


def _member(y, strength, seed, noise=1.0):
    """Probabilities that favour the true class by `strength` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    return _softmax(strength * np.eye(C)[y] + noise * rng.normal(size=(len(y), C)))


def _planted(y):
    """Member 0 is nearly the true labels, members 1-3 are noise."""
    return [_member(y, 6.0, 1, noise=0.3)] + [_member(y, 0.0, s) for s in (2, 3, 4)]


def _oof(probs_list, y):
    ids = np.array([f"img{i:04d}" for i in range(len(y))])
    return [Predictions(ids, p, tuple("abcd"), y) for p in probs_list]


@pytest.mark.parametrize("method", ensemble.BLENDS)
def test_every_blend_rows_sum_to_one_without_nan(method):
    y = _labels()
    probs = _planted(y)
    probs[1][:5] = 0.0  # rows of zeros must not make log(0) or 0/0 anywhere
    probs[1][:5, 0] = 1.0
    out = ensemble.blend(probs, method, weights=[0.4, 0.2, 0.2, 0.2])
    assert out.shape == (N, C)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)


def test_mean_and_weighted():
    a, b = _member(_labels(), 1.0, 1), _member(_labels(), 1.0, 2)
    np.testing.assert_allclose(ensemble.blend([a, b], "mean"), (a + b) / 2, atol=1e-7)
    np.testing.assert_allclose(ensemble.blend([a, b], "weighted", [3, 1]), 0.75 * a + 0.25 * b, atol=1e-7)
    with pytest.raises(ValueError, match="needs weights"):
        ensemble.blend([a, b], "weighted")
    with pytest.raises(ValueError, match="valid methods"):
        ensemble.blend([a, b], "median")


def test_gmean_equals_mean_for_identical_members():
    p = _member(_labels(), 1.0, 1)
    np.testing.assert_allclose(ensemble.blend([p, p, p], "gmean"), ensemble.blend([p, p, p], "mean"), atol=1e-7)


def test_rank_blend_is_invariant_to_monotone_transform_of_a_member():
    y = _labels()
    probs = _planted(y)
    # strictly increasing per-column transforms: they change values (and row sums), never orders within a column
    warped = [probs[0] ** 3, np.log1p(probs[1]) * 7 + 2] + probs[2:]
    np.testing.assert_allclose(ensemble.blend(probs, "rank"), ensemble.blend(warped, "rank"), atol=1e-12)
    assert not np.allclose(ensemble.blend(probs, "mean"), ensemble.blend(warped, "mean"))


def test_fit_weights_recovers_planted_member():
    y = _labels()
    w = ensemble.fit_weights(_planted(y), y)
    assert w[0] > 0.9
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9


def test_greedy_picks_planted_member_first_and_most():
    y = _labels()
    probs = _planted(y)[::-1]  # planted best is last, so picking it is not an index accident
    w = ensemble.greedy_select(probs, y, "log_loss", bagging=1)
    assert np.argmax(w) == 3 and w[3] > 0.9
    bagged = ensemble.greedy_select(probs, y, "accuracy", bagging=10, seed=3)
    assert np.argmax(bagged) == 3
    np.testing.assert_array_equal(bagged, ensemble.greedy_select(probs, y, "accuracy", bagging=10, seed=3))


def test_greedy_sorted_initialisation_starts_from_the_best_members():
    y = _labels()
    probs = [_member(y, 0.0, 9), _member(y, 2.0, 1), _member(y, 1.5, 2)]
    w = ensemble.greedy_select(probs, y, "log_loss", n_iter=0, init_best=2, bagging=1)
    np.testing.assert_allclose(w, [0.0, 0.5, 0.5])


def test_fast_scorers_match_kit_metrics():
    y = _labels()
    p = _member(y, 1.0, 5)
    for metric in ("log_loss", "accuracy", "f1_macro"):
        fn, _ = ensemble._scorer(metric)
        assert fn(y, p) == pytest.approx(score(metric, y, p), abs=1e-9)


def test_temperature_softens_overconfident_probabilities():
    rng = np.random.default_rng(7)
    calibrated = _softmax(1.5 * rng.normal(size=(4000, C)))
    y = np.array([rng.choice(C, p=p) for p in calibrated])  # labels drawn from the probabilities: calibrated
    sharp = ensemble.apply_temperature(calibrated, 1 / 3)  # p**3 renormalised
    T = ensemble.temperature_scale(sharp, y)
    assert T == pytest.approx(3.0, rel=0.15)
    fixed = ensemble.apply_temperature(sharp, T)
    assert score("log_loss", y, fixed) < score("log_loss", y, sharp)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0, atol=1e-9)


def test_evaluate_methods_nested_is_not_better_than_oof_for_fitted_methods():
    y = _labels(seed=1)
    probs = [_member(y, s, seed) for seed, s in enumerate((0.8, 0.6, 0.5, 0.1, 0.0))]
    folds = np.arange(N) % 5
    results = ensemble.evaluate_methods(_oof(probs, y), "log_loss", folds, greedy_options={"bagging": 5})
    assert list(results) == list(ensemble.METHODS)
    for name, r in results.items():
        assert r.weights.shape == (5,) and abs(r.weights.sum() - 1) < 1e-9
        if name in ensemble.FITTED:
            assert r.nested_score >= r.oof_score  # log loss: lower is better, fitted weights flatter the oof score
        else:
            assert r.nested_score == r.oof_score
            np.testing.assert_allclose(r.weights, 0.2)
    choice = ensemble.choose_method(results, "log_loss", y)  # kit.choice's rule: mean unless beaten beyond noise
    assert choice.name == "mean" or results[choice.name].nested_score < results["mean"].nested_score
    assert choice.why


def test_evaluate_methods_holdout_and_apply_to_test():
    y = _labels()
    probs = _planted(y)
    results = ensemble.evaluate_methods(_oof(probs, y), "accuracy", None, seed=0)
    assert ensemble.choose_method(results, "accuracy", y).name in ensemble.METHODS
    assert results["weights"].weights[0] > 0.9
    test_y = _labels(seed=5, n=50)
    test = _planted(test_y)
    for name, r in results.items():
        out = ensemble.apply_method(test, r, name)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(ensemble.apply_method(test, results["gmean"]), ensemble.blend(test, "gmean"))


def test_misaligned_members_are_named():
    y = _labels()
    a, b = _oof(_planted(y)[:2], y)
    shuffled = b.reorder(b.ids[::-1])
    with pytest.raises(ValueError, match="member 1 .*different order"):
        ensemble.evaluate_methods([a, shuffled], "log_loss", None)
    other = Predictions(b.ids, b.probs, tuple("abce"), y)
    with pytest.raises(ValueError, match="member 1 has classes"):
        ensemble.check_aligned([a, other])
    fewer = Predictions(b.ids[:10], b.probs[:10], b.classes, y[:10])
    with pytest.raises(ValueError, match="member 1 has 10 ids"):
        ensemble.check_aligned([a, fewer])


def test_import_does_not_pull_torch():
    code = "import kit.ensemble, kit.submit, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _complementary_members(n=600, seed=0):
    """Two members that are each right on half of the classes and guess on the others: a weighted mean cannot
    undo that, a stacker can."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    members = []
    for good in ((0, 1), (2, 3)):
        logits = rng.normal(0, 1, (n, 4))
        sure = np.isin(y, good)
        logits[sure, y[sure]] += 4.0
        p = np.exp(logits)
        members.append(p / p.sum(1, keepdims=True))
    return members, y


def test_stack_helps_where_members_are_complementary_and_its_nested_score_is_honest():
    members, y = _complementary_members()
    oof = [Predictions([f"i{k}" for k in range(len(y))], p, tuple("abcd"), y) for p in members]
    folds = np.arange(len(y)) % 5
    res = ensemble.evaluate_methods(oof, "log_loss", folds=folds)
    stack = res["stack"]
    assert stack.nested_score < res["mean"].nested_score and stack.nested_score < res["weights"].nested_score
    assert stack.nested_score >= stack.oof_score  # log loss: held-out rows are never easier than the fitted ones
    probs = ensemble.apply_method(members, stack)
    assert probs.shape == (len(y), 4) and np.allclose(probs.sum(1), 1)
    assert stack.weights.shape == (2,) and stack.weights.sum() == pytest.approx(1)
    assert ensemble.choose_method(res, "log_loss", y).name == "stack"
