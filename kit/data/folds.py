"""Which labelled images validate which model: one fold number per row.

kfold: fold k (0..K-1) is validated by the model trained on all other folds (recipe keys data.split: kfold,
data.folds). holdout: rows with fold 0 are the validation set and rows with fold -1 are always trained on
(data.holdout_fraction). Seeded by data.seed only. What is stratified depends on the labels given:

    1-D integers (classes, 0/1, grades)  by class (StratifiedKFold / train_test_split)
    1-D reals (regression)               by quantile bin of the value, the bins then as classes
    2-D 0/1 (several labels an image)    iterative stratification (iterstrat's MultilabelStratifiedKFold /
                                         MultilabelStratifiedShuffleSplit): every label's positives spread over
                                         the folds as evenly as they can be; a label with fewer positives than
                                         folds is no error, it is only missing from some folds
    groups (e.g. patient ids, data.group_column): a group never lies in two folds; StratifiedGroupKFold on the
                                         strata above (several labels: each row's rarest positive label)
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.recipe import DataSpec

ALWAYS_TRAIN = -1  # holdout: rows that are never validated on


class FoldError(DataError):
    """A split that cannot be made from these labels; the message names the class and the fix."""


def make_folds(labels, spec: DataSpec, classes=None, groups=None) -> np.ndarray:
    """Fold number per row (int64): 0..K-1 for kfold; 0 (validation) or -1 (training) for holdout.

    `labels`: the stratification target, (n,) integers, (n,) reals or (n, K) 0/1 (module docstring). `groups`:
    (n,) group ids; rows of one group always share a fold. `classes` (names indexed by label) only makes error
    messages readable.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if groups is not None:
        return _group_folds(y, _checked_groups(groups, len(y), spec), spec, classes)
    if y.ndim == 2:
        return _multilabel_folds(_checked_multilabel(y), spec)
    if y.dtype.kind == "f":
        return _class_folds(_value_bins(y, spec), spec, classes=None)
    return _class_folds(y, spec, classes)


def _class_folds(labels, spec: DataSpec, classes) -> np.ndarray:
    """Stratified by class: the split of the first release, unchanged row for row."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    y = np.asarray(labels, dtype=np.int64)
    values, counts = np.unique(y, return_counts=True)
    if spec.split == "kfold":
        _check_class_sizes(values, counts, spec.folds, spec, classes)
        folds = np.empty(len(y), dtype=np.int64)
        skf = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
        for k, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):
            folds[val] = k
        return folds
    _check_class_sizes(values, counts, 2, spec, classes)
    n_val = int(np.ceil(spec.holdout_fraction * len(y)))
    if n_val < len(values) or len(y) - n_val < len(values):
        raise FoldError(f"data.holdout_fraction={spec.holdout_fraction} of {len(y)} images gives {n_val} "
                        f"validation images for {len(values)} classes; each side needs one image per class, so "
                        f"choose a fraction between {len(values) / len(y):.3g} and {1 - len(values) / len(y):.3g}")
    _, val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=spec.seed)
    folds = np.full(len(y), ALWAYS_TRAIN, dtype=np.int64)
    folds[val] = 0
    return folds


def _holdout_size(n: int, spec: DataSpec) -> int:
    n_val = int(np.ceil(spec.holdout_fraction * n))
    if not 1 <= n_val <= n - 1:
        raise FoldError(f"data.holdout_fraction={spec.holdout_fraction} of {n} images gives {n_val} validation "
                        f"images; each side needs one, so choose a fraction between {1 / n:.3g} and "
                        f"{1 - 1 / n:.3g}")
    return n_val


def _check_rows(n: int, spec: DataSpec) -> None:
    need = spec.folds if spec.split == "kfold" else 2
    if n < need:
        what = f"data.folds={spec.folds}" if spec.split == "kfold" else "a holdout split (one image a side)"
        raise FoldError(f"{n} labelled image{'s' * (n != 1)}, fewer than {what} needs; add images"
                        + (f" or use data.folds: {n}" if spec.split == "kfold" and n >= 2 else ""))


def _value_bins(y: np.ndarray, spec: DataSpec) -> np.ndarray:
    """Real targets as quantile bins, so every fold spans the range of values: min(10, n // (2 * folds)) bins, at
    least 2 (holdout counts as round(1 / holdout_fraction) folds), then bins too small to reach every fold (fewer
    rows than folds; 2 for holdout) merged into their smaller neighbour. Ties can merge quantiles, too."""
    if not np.isfinite(y).all():
        raise FoldError(f"the labels hold {int((~np.isfinite(y)).sum())} missing or infinite values; drop those "
                        f"rows or fill in their values")
    _check_rows(len(y), spec)
    k = spec.folds if spec.split == "kfold" else max(2, round(1 / spec.holdout_fraction))
    n_bins = max(2, min(10, len(y) // (2 * k)))
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, y, side="right")
    need = spec.folds if spec.split == "kfold" else 2
    if spec.split == "holdout":  # each bin must reach both sides, and the validation side has n_val rows
        n_val = _holdout_size(len(y), spec)
        need = max(2, int(np.ceil(len(y) / min(n_val, len(y) - n_val))))
    while True:
        values, counts = np.unique(bins, return_counts=True)
        if len(values) == 1 or counts.min() >= need:
            break
        i = int(np.argmin(counts))  # the smallest bin joins its smaller neighbour
        j = i - 1 if i == len(values) - 1 or (i > 0 and counts[i - 1] <= counts[i + 1]) else i + 1
        bins[bins == values[i]] = values[j]
    return np.unique(bins, return_inverse=True)[1].astype(np.int64)


def _checked_multilabel(y: np.ndarray) -> np.ndarray:
    if not np.isin(y, (0, 1)).all():
        raise FoldError(f"labels of several columns must be 0/1 (one column per label), got values "
                        f"{np.unique(y)[:6].tolist()}")
    return y.astype(np.int64)


def _multilabel_folds(y: np.ndarray, spec: DataSpec) -> np.ndarray:
    """Iterative stratification (Sechidis et al. 2011, via iterstrat): labels are placed rarest first, each row
    into the fold that still wants most of that label. No per-label size check: a label with fewer positives than
    folds cannot be in every fold and is spread as well as it can be."""
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
    except ImportError:
        raise FoldError("splitting images with several labels needs the package iterative-stratification: "
                        "pip install iterative-stratification") from None
    _check_rows(len(y), spec)
    x = np.zeros((len(y), 1))
    if spec.split == "kfold":
        folds = np.empty(len(y), dtype=np.int64)
        mskf = MultilabelStratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
        for k, (_, val) in enumerate(mskf.split(x, y)):
            folds[val] = k
        return folds
    n_val = _holdout_size(len(y), spec)
    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=spec.seed)
    _, val = next(split.split(x, y))
    folds = np.full(len(y), ALWAYS_TRAIN, dtype=np.int64)
    folds[val] = 0
    return folds


def _checked_groups(groups, n: int, spec: DataSpec) -> np.ndarray:
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise FoldError(f"groups must hold one id per labelled image: {n} images, groups of shape {g.shape}")
    g = np.array(["" if v is None else str(v).strip() for v in g])
    missing = np.isin(np.char.lower(g), ("", "nan"))
    if missing.any():
        raise FoldError(f"{int(missing.sum())} labelled image{'s have' if missing.sum() > 1 else ' has'} no group "
                        f"(data.group_column is empty or 'nan', first at row {int(np.argmax(missing))}); fill in "
                        f"the group of every image, or drop data.group_column")
    n_groups = len(np.unique(g))
    need = spec.folds if spec.split == "kfold" else 2
    if n_groups < need:
        what = f"data.folds={spec.folds}" if spec.split == "kfold" else "a holdout split (one group a side)"
        fix = f"use data.folds: {n_groups} or data.split: holdout" if n_groups >= 2 else "add images of other groups"
        raise FoldError(f"the images come from {n_groups} group{'s' * (n_groups != 1)} (data.group_column), fewer "
                        f"than {what} needs: a group is never split; {fix}")
    return g


def _group_strata(y: np.ndarray, spec: DataSpec, classes) -> np.ndarray:
    """The class of each row that StratifiedGroupKFold balances. Several labels: the row's rarest positive label
    (1 + its column; 0 for a row with none), so the rare labels, which stratification matters most for, spread
    over the folds; a hash of the whole label set would make classes too small to balance."""
    if y.ndim == 2:
        y = _checked_multilabel(y)
        rarity = np.where(y == 1, y.sum(0)[None, :], np.iinfo(np.int64).max)
        return np.where(y.any(1), np.argmin(rarity, axis=1) + 1, 0)
    if y.dtype.kind == "f":
        return _value_bins(y, spec)
    y = y.astype(np.int64)
    values, counts = np.unique(y, return_counts=True)
    _check_class_sizes(values, counts, spec.folds if spec.split == "kfold" else 2, spec, classes)
    return y


def _group_folds(y: np.ndarray, groups: np.ndarray, spec: DataSpec, classes) -> np.ndarray:
    """kfold: StratifiedGroupKFold's folds (groups balanced greedily by class); a size-balanced assignment of whole
    groups where it leaves a fold empty. holdout: of round(1 / holdout_fraction) such folds, the one whose size
    is nearest holdout_fraction of the rows (whole groups: the fraction is met as closely as the groups allow)."""
    import warnings
    from sklearn.model_selection import StratifiedGroupKFold

    strata = _group_strata(y, spec, classes)
    n_groups = len(np.unique(groups))
    k = spec.folds if spec.split == "kfold" else min(n_groups, max(2, round(1 / spec.holdout_fraction)))
    folds = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=spec.seed)
        for f, (_, val) in enumerate(sgkf.split(np.zeros(len(y)), strata, groups)):
            folds[val] = f
    if len(np.unique(folds)) < k:
        folds = _balanced_group_folds(groups, k)
    if spec.split == "kfold":
        return folds
    n_val = _holdout_size(len(y), spec)
    sizes = np.bincount(folds, minlength=k)
    val = int(np.argmin(np.abs(sizes - n_val)))
    return np.where(folds == val, 0, ALWAYS_TRAIN).astype(np.int64)


def _balanced_group_folds(groups: np.ndarray, k: int) -> np.ndarray:
    """Whole groups into k folds of balanced sizes, scikit-learn's GroupKFold (largest group first into the
    smallest fold; deterministic); with at least k groups no fold is empty."""
    from sklearn.model_selection import GroupKFold
    folds = np.empty(len(groups), dtype=np.int64)
    for f, (_, val) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)):
        folds[val] = f
    return folds


def _check_class_sizes(values, counts, need: int, spec: DataSpec, classes) -> None:
    """FoldError naming the classes with fewer than `need` labelled images, with advice that can work: fewer
    folds only help a class of 2 or more; a class of one image can be split neither way."""
    small = [(int(v), int(c)) for v, c in zip(values, counts) if c < need]
    if not small:
        return

    def name(v):
        return f"class {classes[v]!r}" if classes is not None else f"class {v}"

    v, c = min(small, key=lambda vc: vc[1])  # the smallest class decides which advice can work
    images = f"{c} labelled image{'s' * (c != 1)}"
    if spec.split == "kfold":
        msg = f"{name(v)} has {images}, fewer than data.folds={spec.folds}: every fold needs one of each class"
    else:
        msg = (f"{name(v)} has {images}: a stratified holdout (data.split: holdout) needs at least 2 of each "
               f"class, one to train on and one to validate")
    others = [f"{name(o)} ({n} image{'s' * (n != 1)})" for o, n in small if o != v]
    if others:
        msg += f"; also too small: {', '.join(others[:5])}" + (f" and {len(others) - 5} more" if len(others) > 5
                                                               else "")
    singles = [name(o) for o, n in small if n == 1]
    if singles:
        rows = "its row" if len(singles) == 1 else "their rows"
        fix = (f"a class with one image cannot be split either way (kfold or holdout): add images of "
               f"{', '.join(singles[:5])}, or drop {rows} from the labelled data")
    else:
        fix = f"use data.folds: {c} or fewer, or data.split: holdout, or add images of {name(v)}"
    raise FoldError(f"{msg}; {fix}")


def fold_ids(folds) -> list[int]:
    """The folds that are validated: [0] for a holdout split, [0..K-1] for kfold."""
    return sorted(int(f) for f in np.unique(np.asarray(folds)) if f != ALWAYS_TRAIN)


def save_folds(path, ids, labels, folds) -> None:
    """Write id,label,fold as CSV, atomically (a reader never sees half a file); id,fold where labels are not one
    integer a row (several labels, real values, or None): the labels' own file is the record of those."""
    from kit.rundir import write_text_atomic
    cols = {"id": np.asarray(ids, dtype=str)}
    y = None if labels is None else np.asarray(labels)
    if y is not None and y.ndim == 1 and y.dtype.kind in "biu":
        cols["label"] = y.astype(np.int64)
    cols["fold"] = np.asarray(folds, dtype=np.int64)
    write_text_atomic(path, pd.DataFrame(cols).to_csv(index=False))


def load_folds(path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(ids as str, labels as int64 or None where the file has no label column, folds as int64) from a file
    written by save_folds."""
    from kit.readers import read_csv
    fix = "remove it to split again (only in a run with no finished member: the split must not change under one)"
    df = read_csv(path, fix=fix)
    missing = [c for c in ("id", "fold") if c not in df.columns]
    if missing:
        raise FoldError(f"{path} is not a folds file: columns {missing} missing (has {list(df.columns)})")
    try:
        labels = df["label"].to_numpy(dtype=np.int64) if "label" in df.columns else None
        return df["id"].to_numpy(dtype=str), labels, df["fold"].to_numpy(dtype=np.int64)
    except (ValueError, OverflowError):
        raise FoldError(f"{path} is not a folds file: its label and fold columns must hold integers; {fix}") from None
