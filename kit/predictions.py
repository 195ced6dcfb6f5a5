"""Predictions of one member (or one blend) on one split: ids, class order, probabilities.

numpy only, so that ensembles, submissions and the leaderboard never import torch.
Saved as .npz; written atomically so that a reader never sees half a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import UnsafeFileError
from kit.readers import read_npz
from kit.rundir import atomic_write


@dataclass(frozen=True)
class Predictions:
    ids: np.ndarray  # (n,) str
    probs: np.ndarray  # (n, K) float32: the task's scores (kit.task; class probabilities summing to 1 a row)
    classes: tuple  # class names, in column order of probs
    labels: np.ndarray | None = None  # the targets (kit.task), when known (validation / out-of-fold): (n,) class
    # indices, 0/1 or grades (int), values (float), or (n, K) 0/1 for several labels

    def __post_init__(self):
        ids = np.asarray(self.ids).astype(str)
        probs = np.asarray(self.probs, dtype=np.float32)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.labels is not None:
            labels = np.asarray(self.labels)
            object.__setattr__(self, "labels", labels.astype(np.float64 if labels.dtype.kind == "f" else np.int64))
        if probs.ndim != 2 or probs.shape != (len(ids), len(self.classes)):
            raise ValueError(
                f"probs must have shape (n_ids, n_classes) = ({len(ids)}, {len(self.classes)}), got {probs.shape}")
        if self.labels is not None and self.labels.shape not in ((len(ids),), (len(ids), probs.shape[1])):
            raise ValueError(f"labels must have shape ({len(ids)},) or ({len(ids)}, {probs.shape[1]}), got "
                             f"{self.labels.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def reorder(self, ids) -> "Predictions":
        """The same predictions in the order of `ids` (which must all be present)."""
        ids = np.asarray(ids).astype(str)
        index = {k: i for i, k in enumerate(self.ids)}
        missing = [k for k in ids if k not in index]
        if missing:
            raise KeyError(f"{len(missing)} ids have no prediction, e.g. {missing[:3]}")
        rows = np.array([index[k] for k in ids], dtype=np.int64)
        labels = None if self.labels is None else self.labels[rows]
        return Predictions(ids, self.probs[rows], self.classes, labels)


PRED_ARRAYS = {"ids": ("US", 1), "probs": ("f", 2), "classes": ("US", 1), "labels?": ("iuf", (1, 2))}


def save_predictions(pred: Predictions, path) -> Path:
    """Write `pred` atomically, unless `path` holds these very predictions already: a command with nothing new to
    predict writes nothing into the run directory."""
    path = Path(path)
    arrays = dict(ids=pred.ids, probs=pred.probs, classes=np.asarray(pred.classes, dtype=str))
    if pred.labels is not None:
        arrays["labels"] = pred.labels
    if path.is_file() and _same(path, pred):
        return path
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _same(path: Path, pred: Predictions) -> bool:
    try:
        old = load_predictions(path)
    except Exception:  # unreadable: replaced
        return False
    return (old.classes == pred.classes and np.array_equal(old.ids, pred.ids) and old.probs.dtype == pred.probs.dtype
            and np.array_equal(old.probs, pred.probs)
            and (old.labels is None) == (pred.labels is None)
            and (old.labels is None or np.array_equal(old.labels, pred.labels)))


def load_predictions(path, fix: str | None = None) -> Predictions:
    """Predictions saved by save_predictions, through the one .npz reader (kit.readers.read_npz: no pickle, keys,
    dtypes and shapes checked); UnsafeFileError naming the file and the fix otherwise."""
    fix = fix or ("remove it and predict again (kit predict RUN --tta MODE for a member's, kit submit RUN for a "
                  "blend's)")
    z = read_npz(path, PRED_ARRAYS, fix=fix)
    try:
        pred = Predictions(z["ids"], z["probs"], tuple(z["classes"].tolist()), z.get("labels"))
    except ValueError as e:
        raise UnsafeFileError(f"cannot read {path}: {e}; {fix}") from None
    if not np.isfinite(pred.probs).all():
        raise UnsafeFileError(f"cannot read {path}: its probabilities are not all finite numbers; {fix}")
    return pred
