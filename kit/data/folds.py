"""Which labelled images validate which model: one fold number per row.

kfold: fold k (0..K-1) is validated by the model trained on all other folds (recipe keys data.split: kfold,
data.folds). holdout: rows with fold 0 are the validation set and rows with fold -1 are always trained on
(data.holdout_fraction). Both are stratified by class and seeded by data.seed only.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from kit.errors import DataError
from kit.recipe import DataSpec

ALWAYS_TRAIN = -1  # holdout: rows that are never validated on


class FoldError(DataError):
    """A split that cannot be made from these labels; the message names the class and the fix."""


def make_folds(labels, spec: DataSpec, classes=None) -> np.ndarray:
    """Fold number per row (int64): 0..K-1 for kfold; 0 (validation) or -1 (training) for holdout.

    `classes` (names indexed by label) only makes error messages readable.
    """
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
    """Write id,label,fold as CSV, atomically (a reader never sees half a file)."""
    from kit.rundir import write_text_atomic
    df = pd.DataFrame({"id": np.asarray(ids, dtype=str), "label": np.asarray(labels, dtype=np.int64),
                       "fold": np.asarray(folds, dtype=np.int64)})
    write_text_atomic(path, df.to_csv(index=False))


def load_folds(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids as str, labels as int64, folds as int64) from a file written by save_folds."""
    from kit.readers import read_csv
    fix = "remove it to split again (only in a run with no finished member: the split must not change under one)"
    df = read_csv(path, fix=fix)
    missing = [c for c in ("id", "label", "fold") if c not in df.columns]
    if missing:
        raise FoldError(f"{path} is not a folds file: columns {missing} missing (has {list(df.columns)})")
    try:
        return (df["id"].to_numpy(dtype=str), df["label"].to_numpy(dtype=np.int64),
                df["fold"].to_numpy(dtype=np.int64))
    except (ValueError, OverflowError):
        raise FoldError(f"{path} is not a folds file: its label and fold columns must hold integers; {fix}") from None
