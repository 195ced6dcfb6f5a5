"""kit.data.folds for the task kinds beyond one class a row: groups (no group in two folds), several labels
(iterative stratification), real values (quantile bins), and the first release's split unchanged."""
import numpy as np
import pytest

from kit.data import ALWAYS_TRAIN, FoldError, load_folds, make_folds, save_folds
from kit.recipe import DataSpec


def _groups(rng, n_groups=60, lo=1, hi=15):
    sizes = rng.integers(lo, hi + 1, n_groups)
    return np.repeat([f"IP_{i:04d}" for i in range(n_groups)], sizes)


def _one_fold_per_group(folds, groups):
    return all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", ["binary", "multiclass", "multilabel", "regression"])
def test_no_group_is_in_two_folds(seed, target):
    rng = np.random.default_rng(seed)
    groups = _groups(rng)
    n = len(groups)
    y = {"binary": (rng.random(n) < 0.15).astype(np.int64), "multiclass": rng.integers(0, 3, n),
         "multilabel": (rng.random((n, 4)) < 0.3).astype(np.int64), "regression": rng.normal(0, 1, n)}[target]
    folds = make_folds(y, DataSpec(split="kfold", folds=5, seed=seed), groups=groups)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and _one_fold_per_group(folds, groups)
    assert np.bincount(folds).min() > 0.5 * n / 5  # sizes roughly even
    again = make_folds(y, DataSpec(split="kfold", folds=5, seed=seed), groups=groups)
    assert (folds == again).all()  # seeded by data.seed only
    hold = make_folds(y, DataSpec(split="holdout", holdout_fraction=0.2, seed=seed), groups=groups)
    assert set(hold) == {ALWAYS_TRAIN, 0} and _one_fold_per_group(hold, groups)
    assert 0.1 * n < (hold == 0).sum() < 0.3 * n  # about holdout_fraction of the rows, in whole groups


def test_grouped_binary_folds_keep_the_positive_rate():
    rng = np.random.default_rng(5)
    groups = _groups(rng, 200)
    y = (rng.random(len(groups)) < 0.12).astype(np.int64)
    folds = make_folds(y, DataSpec(split="kfold", folds=5, seed=0), groups=groups)
    rates = [y[folds == k].mean() for k in range(5)]
    assert max(rates) - min(rates) < 0.03


def test_several_labels_keep_each_labels_positive_rate_per_fold():
    rng = np.random.default_rng(6)
    n = 1000
    y = (rng.random((n, 6)) < [0.02, 0.05, 0.1, 0.3, 0.5, 0.7]).astype(np.int64)
    y[:50] = 0  # images with no label
    folds = make_folds(y, DataSpec(split="kfold", folds=5, seed=0))
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and abs(np.bincount(folds) - n / 5).max() <= 3
    for k in range(5):
        assert np.abs(y[folds == k].mean(0) - y.mean(0)).max() < 0.01
    hold = make_folds(y, DataSpec(split="holdout", holdout_fraction=0.2, seed=0))
    assert (hold == 0).sum() == 200 and np.abs(y[hold == 0].mean(0) - y.mean(0)).max() < 0.01
    a, b = (make_folds(y, DataSpec(split="kfold", folds=5, seed=s)) for s in (0, 1))
    assert (a == folds).all() and (a != b).any()  # seeded by data.seed only


def test_a_label_rarer_than_the_folds_is_no_error():
    y = np.zeros((40, 3), dtype=np.int64)
    y[:20, 0] = 1
    y[:2, 1] = 1  # 2 positives, 5 folds
    folds = make_folds(y, DataSpec(split="kfold", folds=5, seed=0))
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and len(set(folds[:2])) == 2  # as spread as it can be


def test_real_values_give_folds_of_similar_means():
    rng = np.random.default_rng(7)
    y = rng.lognormal(3, 0.8, 500)  # skewed, like a popularity score
    folds = make_folds(y, DataSpec(split="kfold", folds=5, seed=0))
    means = np.array([y[folds == k].mean() for k in range(5)])
    assert np.abs(means - y.mean()).max() < 0.08 * y.mean()
    deciles = np.quantile(y, np.linspace(0.1, 0.9, 9))
    for k in range(5):  # every fold spans every decile of the values in about equal shares
        assert np.abs(np.bincount(np.searchsorted(deciles, y[folds == k]), minlength=10) - 10).max() <= 2

    def spread(f):
        return np.ptp([y[f == k].mean() for k in range(5)])
    from sklearn.model_selection import KFold
    plain = np.empty(500, dtype=np.int64)
    strat, rand = [], []
    for s in range(5):  # fold means vary less than in unstratified folds
        for k, (_, val) in enumerate(KFold(5, shuffle=True, random_state=s).split(y)):
            plain[val] = k
        strat.append(spread(make_folds(y, DataSpec(split="kfold", folds=5, seed=s))))
        rand.append(spread(plain))
    assert np.mean(strat) < 0.7 * np.mean(rand)
    hold = make_folds(y, DataSpec(split="holdout", holdout_fraction=0.2, seed=0))
    assert (hold == 0).sum() == 100 and abs(y[hold == 0].mean() - y.mean()) < 0.05 * y.mean()
    tied = np.r_[np.zeros(30), rng.normal(50, 10, 20)]  # ties merge quantiles; small bins merge
    for split in ("kfold", "holdout"):
        f = make_folds(tied, DataSpec(split=split, folds=5, seed=0))
        assert len(f) == 50


@pytest.mark.parametrize("split", ["kfold", "holdout"])
def test_one_label_a_row_is_the_first_releases_split(split):
    from sklearn.model_selection import StratifiedKFold, train_test_split
    y = np.random.default_rng(8).integers(0, 4, 200)
    folds = make_folds(y, DataSpec(split=split, folds=5, holdout_fraction=0.2, seed=11))
    want = np.full(200, ALWAYS_TRAIN)
    if split == "kfold":
        for k, (_, val) in enumerate(StratifiedKFold(5, shuffle=True, random_state=11).split(y, y)):
            want[val] = k
    else:
        want[train_test_split(np.arange(200), test_size=40, stratify=y, random_state=11)[1]] = 0
    assert (folds == want).all()
    assert (make_folds(y[:, None], DataSpec(split=split, folds=5, seed=11)) == folds).all()  # one column: same


def test_group_errors_name_the_rule_and_the_fix():
    y = np.arange(12) % 2
    with pytest.raises(FoldError, match=r"3 groups .*fewer than data.folds=5.*use data.folds: 3"):
        make_folds(y, DataSpec(split="kfold", folds=5), groups=np.repeat(["a", "b", "c"], 4))
    with pytest.raises(FoldError, match=r"1 group .*holdout.*add images of other groups"):
        make_folds(y, DataSpec(split="holdout"), groups=np.repeat(["a"], 12))
    for missing in ("", "nan", "NaN", None):
        g = np.array(["a", "b", "c", "d"] * 3, dtype=object)
        g[4] = missing
        with pytest.raises(FoldError, match=r"1 labelled image has no group .*row 4.*data.group_column"):
            make_folds(y, DataSpec(split="kfold", folds=2), groups=g)
    with pytest.raises(FoldError, match="one id per labelled image"):
        make_folds(y, DataSpec(split="kfold", folds=2), groups=["a", "b"])


def test_other_errors():
    with pytest.raises(FoldError, match="must be 0/1"):
        make_folds(np.full((10, 3), 2), DataSpec(split="kfold", folds=2))
    with pytest.raises(FoldError, match="missing or infinite"):
        make_folds(np.r_[np.arange(10.0), np.nan], DataSpec(split="kfold", folds=2))
    with pytest.raises(FoldError, match="3 labelled images, fewer than data.folds=5"):
        make_folds(np.array([0.5, 1.5, 2.5]), DataSpec(split="kfold", folds=5))


def test_save_and_load_without_one_label_a_row(tmp_path):
    rng = np.random.default_rng(9)
    ids = np.array([f"x{i}" for i in range(30)])
    for labels in ((rng.random((30, 3)) < 0.4).astype(np.int64), rng.normal(0, 1, 30), None):
        folds = make_folds(np.arange(30) % 3 if labels is None else labels, DataSpec(split="kfold", folds=3))
        path = tmp_path / "folds.csv"
        save_folds(path, ids, labels, folds)
        assert path.read_text().splitlines()[0] == "id,fold"
        i, y, f = load_folds(path)
        assert (i == ids).all() and y is None and (f == folds).all() and f.dtype == np.int64
    save_folds(path, ids, np.arange(30) % 3, folds)
    assert path.read_text().splitlines()[0] == "id,label,fold"
    assert (load_folds(path)[1] == np.arange(30) % 3).all()


def test_the_size_balanced_fallback_keeps_groups_whole_and_fills_every_fold():
    from kit.data.folds import _balanced_group_folds
    rng = np.random.default_rng(10)
    groups = _groups(rng, 7, 1, 40)
    folds = _balanced_group_folds(groups, 5)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and _one_fold_per_group(folds, groups)
    assert (folds == _balanced_group_folds(groups, 5)).all()
