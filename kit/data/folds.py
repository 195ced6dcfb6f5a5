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
    name = (lambda k: repr(classes[k])) if classes is not None else (lambda k: f"{k}")
    if spec.split == "kfold":
        small = [(v, c) for v, c in zip(values, counts) if c < spec.folds]
        if small:
            v, c = int(small[0][0]), int(small[0][1])
            raise FoldError(f"class {name(v)} has {c} labelled image{'s' * (c != 1)}, fewer than data.folds="
                            f"{spec.folds}: every fold needs one of each class; use data.folds: {max(2, c)} or "
                            f"fewer, or data.split: holdout"
                            + (f" ({len(small)} classes are this small)" if len(small) > 1 else ""))
        folds = np.empty(len(y), dtype=np.int64)
        skf = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
        for k, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):
            folds[val] = k
        return folds
    single = [v for v, c in zip(values, counts) if c < 2]
    if single:
        raise FoldError(f"class {name(single[0])} has 1 labelled image: a stratified holdout needs at least 2 "
                        f"of each class; add images or drop the class")
    n_val = int(np.ceil(spec.holdout_fraction * len(y)))
    if n_val < len(values) or len(y) - n_val < len(values):
        raise FoldError(f"data.holdout_fraction={spec.holdout_fraction} of {len(y)} images gives {n_val} "
                        f"validation images for {len(values)} classes; each side needs one image per class, so "
                        f"choose a fraction between {len(values) / len(y):.3g} and {1 - len(values) / len(y):.3g}")
    _, val = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=spec.seed)
    folds = np.full(len(y), ALWAYS_TRAIN, dtype=np.int64)
    folds[val] = 0
    return folds


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
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    missing = [c for c in ("id", "label", "fold") if c not in df.columns]
    if missing:
        raise FoldError(f"{path} is not a folds file: columns {missing} missing (has {list(df.columns)})")
    return df["id"].to_numpy(dtype=str), df["label"].to_numpy(dtype=np.int64), df["fold"].to_numpy(dtype=np.int64)
