import numpy as np
import pytest

from kit.data import FoldError, fold_ids, load_folds, make_folds, save_folds
from kit.recipe import DataSpec

LABELS = np.repeat([0, 1, 2], [23, 13, 9])  # 45 rows, unbalanced


def test_kfold_is_stratified():
    folds = make_folds(LABELS, DataSpec(split="kfold", folds=4, seed=3))
    assert folds.dtype == np.int64 and sorted(set(folds)) == [0, 1, 2, 3]
    assert fold_ids(folds) == [0, 1, 2, 3]
    for k in range(4):
        for c, n in enumerate(np.bincount(LABELS)):
            assert abs(np.sum((folds == k) & (LABELS == c)) - n / 4) <= 1


def test_holdout_fraction_and_stratification():
    folds = make_folds(LABELS, DataSpec(split="holdout", holdout_fraction=0.2, seed=1))
    assert set(folds) == {-1, 0} and fold_ids(folds) == [0]
    assert (folds == 0).sum() == 9  # ceil(0.2 * 45)
    for c, n in enumerate(np.bincount(LABELS)):
        assert abs(np.sum((folds == 0) & (LABELS == c)) - 0.2 * n) <= 1


@pytest.mark.parametrize("split", ["kfold", "holdout"])
def test_seed_reproducible_and_different(split):
    a = make_folds(LABELS, DataSpec(split=split, folds=3, seed=7))
    b = make_folds(LABELS, DataSpec(split=split, folds=3, seed=7))
    c = make_folds(LABELS, DataSpec(split=split, folds=3, seed=8))
    assert (a == b).all() and (a != c).any()


def test_too_few_members_names_class_and_fix():
    y = np.array([0] * 10 + [1] * 3)
    with pytest.raises(FoldError, match=r"class 'dog' has 3 labelled images, fewer than data.folds=5.*"
                                        r"data.folds: 3 .*holdout"):
        make_folds(y, DataSpec(split="kfold", folds=5), classes=("cat", "dog"))
    with pytest.raises(FoldError, match="class 1 has 1 labelled image"):
        make_folds(np.array([0] * 10 + [1]), DataSpec(split="holdout"))
    with pytest.raises(FoldError, match="holdout_fraction"):
        make_folds(LABELS, DataSpec(split="holdout", holdout_fraction=0.02))


def test_save_and_load_roundtrip(tmp_path):
    ids = np.array([f"x{i}" for i in range(len(LABELS))])
    folds = make_folds(LABELS, DataSpec(split="kfold", folds=3))
    path = tmp_path / "sub" / "folds.csv"
    save_folds(path, ids, LABELS, folds)
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temporary file left behind
    assert path.read_text().splitlines()[0] == "id,label,fold"
    i, y, f = load_folds(path)
    assert (i == ids).all() and (y == LABELS).all() and (f == folds).all() and f.dtype == np.int64


@pytest.mark.parametrize("split", ["kfold", "holdout"])
def test_a_class_of_one_image_is_named_with_advice_that_works(split):
    y = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.raises(FoldError) as e:
        make_folds(y, DataSpec(split=split, folds=5), classes=("cat", "dog", "fox"))
    msg = str(e.value)
    assert msg.startswith("class 'fox' has 1 labelled image")
    assert "add images of class 'fox', or drop its row" in msg
    # fewer folds or the other split cannot help a class of one image, so neither is suggested
    assert "data.folds: " not in msg and "or data.split: holdout" not in msg


def test_the_smallest_class_decides_the_advice_and_others_are_named():
    y = np.array([0] * 10 + [1] * 3 + [2] * 2)
    with pytest.raises(FoldError) as e:
        make_folds(y, DataSpec(split="kfold", folds=5), classes=("cat", "dog", "fox"))
    msg = str(e.value)
    assert msg.startswith("class 'fox' has 2 labelled images, fewer than data.folds=5")
    assert "also too small: class 'dog' (3 images)" in msg
    assert "use data.folds: 2 or fewer" in msg  # 3 folds would still fail for 'fox'
    y = np.array([0] * 10 + [1] * 3 + [2])
    with pytest.raises(FoldError, match="class 'fox' has 1 labelled image.*class 'dog' \\(3 images\\).*add images of "
                                        "class 'fox'"):
        make_folds(y, DataSpec(split="kfold", folds=5), classes=("cat", "dog", "fox"))
