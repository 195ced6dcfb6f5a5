"""Where each artifact of a run lives, and atomic writes (temp file, fsync, rename): a reader never sees
half a file, and a crash leaves the previous version intact.

runs/<name>/
  recipe.yaml, recipe.hash        the resolved recipe and its hash (a run directory holds one recipe)
  folds.csv                       id, label, fold (-1: always in training for a holdout)
  members/<member>/               last.pt, best.pt, history.csv, done.json
  members/<member>/preds/         <split>_<tta>.npz  (split: oof | test)
  ensemble/                       report.json, oof_<method>.npz, test_<method>.npz
  submission.csv, summary.json
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj, path) -> Path:
    import torch  # only the writers of checkpoints need torch
    return atomic_write(path, lambda f: torch.save(obj, f))


def write_bytes_atomic(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_csv_atomic(path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def read_json(path):
    return json.loads(Path(path).read_text())


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def member_dir(run_dir, member: str) -> Path:
    return Path(run_dir) / "members" / member


def pred_path(run_dir, member: str, split: str, tta: str) -> Path:
    return member_dir(run_dir, member) / "preds" / f"{split}_{tta}.npz"
