"""Where the images of a competition come from: `load_sources(spec)` turns a DataSpec into tables.

Three sources (recipe key data.source):
- digits: scikit-learn's bundled 8x8 digits, upscaled, with a fixed part held back as the "test" set whose
  answers are known (test_solution), so the quickstart can be scored like a competition.
- imagefolder: root/train/<class>/* (or root/<class>/*), optional root/<test_dir>/*.
- kaggle: root/<train_csv> (id + label columns), images in root/<image_dir>, test ids from the sample
  submission, test images in root/<test_dir>.
Only paths are collected here; images are decoded by the scan before training (kit.data.scan), then once into
the decoded cache that training and prediction read (kit.data.cache; ImageTable.image), or, without one, by
the loader (kit.data.images). Every image path must resolve, after symlinks, inside its folder
(data.root/data.image_dir or the imagefolder's train folder for labelled images, data.root/data.test_dir for
test images): a CSV row such as `../../etc/passwd` is refused, never opened.
"""
from __future__ import annotations

import functools
import glob
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from kit.data.images import load_item
from kit.errors import DataError
from kit.recipe import DataSpec, TaskSpec
from kit.readers import read_csv
from kit.task import Task, TargetError, check_sample, multiclass, read_targets, sort_classes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DIGITS_SPLIT_SEED = 0  # the digits test set is part of the "competition", fixed whatever data.seed says
DIGITS_PUBLIC_FRACTION = 0.3  # share of the digits test set scored on the "public leaderboard"
LISTED = 5  # offending rows named in one error message; the rest are counted


class DataSourceError(DataError):
    """A dataset folder or CSV that cannot be read as the recipe describes; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class ImageTable:
    ids: np.ndarray  # str, one per image
    items: list  # file paths (str) or HxWx3 uint8 arrays (digits)
    labels: Optional[np.ndarray]  # the targets (kit.task: class indices, 0/1, a 0/1 row per label, grades, values)
    classes: tuple[str, ...]  # the task's outputs: classes, labels, or (the target column,)
    decoded: Optional[object] = None  # kit.data.cache.DecodedRows: these rows' decoded images (attach_decoded_cache)
    groups: Optional[np.ndarray] = None  # str, data.group_column's value of each row (folds keep a group together)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> "ImageTable":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ImageTable(ids=self.ids[idx], items=[self.items[i] for i in idx],
                          labels=None if self.labels is None else self.labels[idx], classes=self.classes,
                          decoded=None if self.decoded is None else self.decoded.subset(idx),
                          groups=None if self.groups is None else self.groups[idx])

    def image(self, row: int) -> np.ndarray:
        """Row `row`'s image, HxWx3 uint8: from the decoded cache when one is attached and holds it, else
        decoded from its file now (kit.data.images.load_item)."""
        if self.decoded is not None:
            image = self.decoded.read(row)
            if image is not None:
                return image
        return load_item(self.items[row])


@dataclass(frozen=True, eq=False)
class Sources:
    train: ImageTable  # labelled
    test: Optional[ImageTable] = None  # unlabelled
    sample_submission: Optional[pd.DataFrame] = None  # every column read as str
    sample_submission_path: Optional[str] = None
    test_solution: Optional[pd.DataFrame] = None  # digits only: id, label, Usage (Public/Private)
    task: Optional[Task] = None  # what the target is (kit.task); default: one class per image among train.classes

    def __post_init__(self):
        if self.task is None:
            object.__setattr__(self, "task", multiclass(self.train.classes))

    def with_train(self, train: ImageTable) -> "Sources":
        return Sources(train, self.test, self.sample_submission, self.sample_submission_path, self.test_solution,
                       self.task)


def load_sources(spec: DataSpec, task_spec: Optional[TaskSpec] = None) -> Sources:
    """The tables of `spec`'s data; the target read as `task_spec` (task.kind) says, or as detected (auto)."""
    task_spec = task_spec or TaskSpec()
    loaders = {"digits": _load_digits, "imagefolder": _load_imagefolder, "kaggle": _load_kaggle}
    if spec.source != "digits" and not spec.root:
        raise DataSourceError(f"data.source={spec.source} needs data.root, the dataset folder")
    if spec.source != "kaggle" and task_spec.kind not in ("auto", "multiclass"):
        raise DataSourceError(f"data.source={spec.source} gives one class per image (task.kind multiclass), not "
                              f"task.kind {task_spec.kind}; a {task_spec.kind} target comes from a labels CSV "
                              f"(data.source: kaggle)")
    if spec.source != "kaggle" and (spec.group_column or spec.label_columns):
        key = "group_column" if spec.group_column else "label_columns"
        raise DataSourceError(f"data.{key} names columns of a labels CSV, and data.source={spec.source} has none; "
                              f"use data.source: kaggle or remove data.{key}")
    sources = loaders[spec.source](spec, task_spec) if spec.source == "kaggle" else loaders[spec.source](spec)
    if spec.limit is not None and spec.limit < len(sources.train):
        sources = sources.with_train(sources.train.subset(np.arange(spec.limit)))
    if spec.sample is not None and spec.sample < len(sources.train):
        sources = sources.with_train(sources.train.subset(stratified_sample(sources.train.labels,
                                                                            spec.sample, spec.seed)))
    return sources


def stratified_sample(labels, n: int, seed: int) -> np.ndarray:
    """Rows of a stratified sample of `n` of `labels` (scikit-learn's train_test_split, random_state=seed), in
    table order; a class too rare to stratify (one image) is sampled without stratification, as are several
    labels a row and real values (a plain random sample)."""
    from sklearn.model_selection import train_test_split
    labels = np.asarray(labels)
    stratify = None
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0:
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 and n >= len(counts[counts > 0]) else None
    rows, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=stratify, random_state=seed)
    return np.sort(rows)


# ---------------------------------------------------------------- digits

def _load_digits(spec: DataSpec) -> Sources:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 8x8 values 0..16 -> 0..255, upscaled with bicubic like a photo would be, grey copied to RGB.
    small = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    size = (spec.digits_size, spec.digits_size)
    arrays = [np.repeat(np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC))[:, :, None], 3, axis=2)
              for a in small]
    y = digits.target.astype(np.int64)
    ids = np.array([f"d{i:04d}" for i in range(len(y))])
    classes = tuple(str(c) for c in range(10))
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=spec.digits_test_fraction,
                                           stratify=y, random_state=DIGITS_SPLIT_SEED)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = ImageTable(ids[train_idx], [arrays[i] for i in train_idx], y[train_idx], classes)
    test = ImageTable(ids[test_idx], [arrays[i] for i in test_idx], None, classes)
    sample = pd.DataFrame({"id": test.ids, "label": classes[0]}).astype(str)
    usage = np.full(len(test_idx), "Private", dtype=object)
    public = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(test_idx))
    usage[public[:round(DIGITS_PUBLIC_FRACTION * len(test_idx))]] = "Public"
    solution = pd.DataFrame({"id": test.ids, "label": [classes[k] for k in y[test_idx]], "Usage": usage})
    return Sources(train, test, sample, None, solution)


# ---------------------------------------------------------------- imagefolder

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _load_imagefolder(spec: DataSpec) -> Sources:
    root = Path(spec.root)
    if not root.is_dir():
        raise DataSourceError(f"data.root {root} is not a folder (resolved to {root.resolve()})")
    train_root = root / "train" if (root / "train").is_dir() else root
    skip = {spec.test_dir} if train_root == root and spec.test_dir else set()
    class_dirs = [d for d in train_root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in skip]
    if not class_dirs:
        raise DataSourceError(f"no class folders in {train_root}; an imagefolder dataset is "
                              f"{train_root}/<class name>/<image files>")
    classes = sort_classes(d.name for d in class_dirs)
    ids, items, labels, empty, problems = [], [], [], [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (train_root / name).rglob("*") if _is_image(p))
        if not files:
            empty.append(str(train_root / name))
        ids += [p.relative_to(train_root).as_posix() for p in files]
        items += [str(p) for p in files]
        labels += [k] * len(files)
    if empty:
        problems.append(f"class folder{'s' * (len(empty) > 1)} {_listing(empty)} hold{'s' * (len(empty) == 1)} no "
                        f"images (looked for {', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images")
    _collect(problems, _check_folder_inside, items, train_root)
    train = ImageTable(np.array(ids), items, np.array(labels, dtype=np.int64), classes)
    test = None
    if spec.test_dir and (root / spec.test_dir).is_dir():
        test = _collect(problems, _folder_table, root / spec.test_dir, classes, lambda p: p.stem)
    _raise_all(problems, root)
    sample, sample_path = _read_sample_submission(root, spec)
    return Sources(train, test, sample, sample_path)


def _folder_table(folder: Path, classes, id_of) -> ImageTable:
    files = sorted(p for p in folder.iterdir() if _is_image(p))
    if not files:
        raise DataSourceError(f"test folder {folder} holds no images; set data.test_dir: null if there is no test set")
    _check_folder_inside([str(p) for p in files], folder)
    ids = [id_of(p) for p in files]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataSourceError(f"test folder {folder} has several files for the ids {dup[:5]} (same name, "
                              f"different extensions); keep one file per id")
    return ImageTable(np.array(ids), [str(p) for p in files], None, tuple(classes))


def _read_sample_submission(root: Path, spec: DataSpec):
    if not spec.sample_submission or not (root / spec.sample_submission).is_file():
        return None, None
    path = root / spec.sample_submission
    return read_csv(path, fix="save it as UTF-8 CSV (id column first), or set data.sample_submission: null"), str(path)


# ---------------------------------------------------------------- kaggle

def _labels_from_names(spec: DataSpec, folder: Path) -> pd.DataFrame:
    """data.label_pattern: the labels table of the image files in `folder`, one row a file: id (the name without
    its extension), label (the pattern's first group), path (the name); a file the pattern misses is an error."""
    pattern = re.compile(spec.label_pattern)
    if not folder.is_dir():
        raise DataSourceError(f"data.image_dir {folder} is not a folder; data.label_pattern reads the labels from "
                              f"the names of the image files in it")
    files = sorted(p for p in folder.iterdir() if _is_image(p))
    found = [(p, pattern.search(p.name)) for p in files]
    missed = [p.name for p, m in found if m is None or not m.group(1)]
    if missed or not files:
        raise DataSourceError(f"data.label_pattern {spec.label_pattern!r} finds no label in {len(missed)} of the "
                              f"{len(files)} image files of {folder}, e.g. {missed[:5]}; fix the pattern (its first "
                              f"group is the label) or move those files out")
    _check_folder_inside([str(p) for p, _ in found], folder)
    return pd.DataFrame({spec.id_column: [p.name[: -len(p.suffix)] if p.suffix else p.name for p, _ in found],
                         spec.label_column: [m.group(1) for _, m in found],
                         LABELLED_FILE: [p.name for p, _ in found]})


LABELLED_FILE = "__file__"  # the file-name column of a table made by _labels_from_names


def _load_kaggle(spec: DataSpec, task_spec: TaskSpec) -> Sources:
    root = Path(spec.root)
    csv = root / spec.train_csv
    if spec.label_pattern:
        df = _labels_from_names(spec, root / spec.image_dir)
        csv = root / spec.image_dir  # where the labels come from, in messages
        spec = spec.model_copy(update={"path_column": LABELLED_FILE})
    elif not csv.is_file():
        raise DataSourceError(f"{csv} does not exist; set data.train_csv to the labels CSV inside {root}, or "
                              f"data.label_pattern when the labels are in the file names")
    else:
        # Only empty cells count as missing: a class may well be called "NA" or "None".
        df = read_csv(csv, na_values=[""], fix="set data.train_csv to the labels CSV (UTF-8, an id and a label column)")
    target_keys = [("label_columns", c) for c in spec.label_columns] if spec.label_columns else \
        [("label_column", spec.label_column)]
    for key, col in (("id_column", spec.id_column), *target_keys, ("path_column", spec.path_column),
                     ("group_column", spec.group_column)):
        if col is not None and col not in df.columns:
            raise DataSourceError(f"{csv} has no column {col!r} (data.{key}); its columns are "
                                  f"{list(df.columns)}; set data.{key} to one of them")
    problems = []  # every problem of the folder, in one message (kit init and kit run alike)
    _collect(problems, _check_empty_cells, df, csv, spec)
    _collect(problems, _check_duplicate_ids, df, csv, spec)
    image_dir = root / spec.image_dir
    names = (df[spec.path_column] if spec.path_column else df[spec.id_column] + spec.image_suffix).fillna("")
    paths = [image_dir / n for n in names]
    column = spec.path_column or spec.id_column
    _collect(problems, _check_csv_inside, paths, names.tolist(), image_dir, csv, f"column {column!r}",
             _train_fix(spec))
    _collect(problems, _check_train_files, paths, df, csv, spec, image_dir)
    sample, sample_path = _read_sample_submission(root, spec)
    targets = _collect(problems, _targets, df, spec, task_spec, csv, sample)
    if targets is not None:
        _collect(problems, _sample_fits, targets[0], sample, sample_path)
    groups = _collect(problems, _groups, df, spec, csv)
    classes = targets[0].outputs if targets else ()
    ids = df[spec.id_column].fillna("").to_numpy(dtype=str)
    test = _collect(problems, _kaggle_test, root, spec, classes, sample, sample_path, ids)
    _raise_all(problems, root)
    task, labels = targets
    train = ImageTable(ids, [str(p) for p in paths], labels, classes, groups=groups)
    return Sources(train, test, sample, sample_path, task=task)


def _targets(df, spec: DataSpec, task_spec: TaskSpec, csv, sample):
    try:
        return read_targets(df, spec, task_spec, csv, sample)
    except TargetError as e:
        raise DataSourceError(str(e)) from None


def _sample_fits(task, sample, sample_path) -> None:
    try:
        check_sample(task, sample, sample_path)
    except TargetError as e:
        raise DataSourceError(str(e)) from None


def _groups(df, spec: DataSpec, csv) -> Optional[np.ndarray]:
    """data.group_column's values as text; every row needs one (a row without its group could leak)."""
    if not spec.group_column:
        return None
    col = df[spec.group_column]
    missing = np.flatnonzero(col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy())
    if len(missing):
        i = int(missing[0])
        raise DataSourceError(f"{csv} row {i} (line {i + 2}): column {spec.group_column!r} (data.group_column) is "
                              f"empty ({len(missing)} rows are); every row needs its group, or folds could put one "
                              f"group on both sides: fill those rows (e.g. a group of their own) or drop them")
    return col.astype(str).to_numpy(dtype=str)


def _collect(problems: list, check, *args):
    """check(*args), its DataSourceError's message added to `problems` instead of raised (None then)."""
    try:
        return check(*args)
    except DataSourceError as e:
        problems.append(str(e))
        return None


def _raise_all(problems: list, root) -> None:
    """One DataSourceError listing every problem found in the dataset at `root` (none: nothing raised)."""
    if len(problems) == 1:
        raise DataSourceError(problems[0])
    if problems:
        raise DataSourceError(f"{len(problems)} problems with the dataset in {root}: "
                              + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))


def _line(i: int, csv: Path) -> str:  # row i of the data is line i + 2 of the file (1-based, after the header)
    return f"row {i} (line {i + 2} of {csv})"


def _check_empty_cells(df: pd.DataFrame, csv: Path, spec: DataSpec) -> None:
    found = []
    for key, col in (("id_column", spec.id_column), ("path_column", spec.path_column)):
        if col is None:
            continue
        missing = np.flatnonzero(df[col].isna().to_numpy())
        if len(missing):
            found.append(f"column {col!r} (data.{key}) is empty at {_line(missing[0], csv)}"
                         f"{f' and {len(missing) - 1} more rows' if len(missing) > 1 else ''}")
    if found:
        raise DataSourceError(f"{csv}: {'; '.join(found)}; every labelled image needs an id")


def _check_duplicate_ids(df: pd.DataFrame, csv: Path, spec: DataSpec) -> None:
    line = functools.partial(_line, csv=csv)
    dup = df[spec.id_column].duplicated(keep=False).to_numpy() & df[spec.id_column].notna().to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)
        raise DataSourceError(f"{csv}: id {df[spec.id_column].iloc[first[0]]!r} appears more than once "
                              f"({', '.join(line(i) for i in first[:4])}); {dup.sum()} rows have duplicate ids "
                              f"in column {spec.id_column!r}; ids must be unique")


def _check_train_files(paths, df, csv: Path, spec: DataSpec, image_dir: Path) -> None:
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return
    i = missing[0]
    hint = _suffix_hint(image_dir, df[spec.id_column].iloc[i]) if not spec.path_column else ""
    raise DataSourceError(
        f"{csv} row {i} (line {i + 2}): image file {paths[i]} does not exist"
        f"{f' ({len(missing) - 1} more rows have missing images)' if len(missing) > 1 else ''}. {hint}"
        f"Set data.image_dir (now {spec.image_dir!r}, the folder under data.root holding the images), "
        f"data.image_suffix (now {spec.image_suffix!r}, appended to ids, e.g. '.jpg')"
        f"{' or data.path_column' if not spec.path_column else f' or fix column {spec.path_column!r}'}")


def _suffix_hint(folder: Path, image_id: str) -> str:
    if not folder.is_dir():
        return f"Folder {folder} does not exist. "
    found = sorted(p.name for p in folder.glob(f"{glob.escape(image_id)}.*") if _is_image(p))
    return f"Found {found[0]} there: set data.image_suffix: {Path(found[0]).suffix!r}. " if found else ""


def _kaggle_test(root: Path, spec: DataSpec, classes, sample, sample_path, train_ids) -> Optional[ImageTable]:
    if not spec.test_dir:
        return None
    folder = root / spec.test_dir
    if sample is not None:
        if sample.shape[1] == 0 or len(sample) == 0:
            raise DataSourceError(f"{sample_path} is empty; it should list the test ids in its first column")
        ids = sample.iloc[:, 0].to_numpy(dtype=str)
        paths = [folder / (i + spec.image_suffix) for i in ids]
        _check_csv_inside(paths, [i + spec.image_suffix for i in ids], folder, sample_path, "the first column",
                          f"fix those ids in {sample_path} or data.image_suffix (now {spec.image_suffix!r}) so that "
                          f"every test image is a file inside data.test_dir ({spec.test_dir!r})")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataSourceError(
                f"{len(missing)} of the {len(ids)} test images listed in {sample_path} are missing, e.g. "
                f"{', '.join(missing[:5])}. {_suffix_hint(folder, ids[0]) if spec.image_suffix == '' else ''}"
                f"Set data.test_dir (now {spec.test_dir!r}) and data.image_suffix (now {spec.image_suffix!r}), "
                f"or data.test_dir: null to train without a test set")
        return ImageTable(ids, [str(p) for p in paths], None, tuple(classes))
    if not folder.is_dir():
        return None
    # Without a sample submission the ids come from file names: the name minus data.image_suffix, or the
    # whole name when the training ids themselves carry an image extension (image_suffix "").
    ids_have_ext = len(train_ids) > 0 and all(Path(i).suffix.lower() in IMAGE_EXTENSIONS for i in train_ids[:50])

    def id_of(p: Path) -> str:
        if spec.image_suffix and p.name.endswith(spec.image_suffix):
            return p.name[: -len(spec.image_suffix)]
        return p.name if ids_have_ext else p.stem

    return _folder_table(folder, classes, id_of)


# ---------------------------------------------------------------- paths stay inside their folder

def outside(paths, folder) -> list[tuple[int, str]]:
    """(index, resolved path) of each of `paths` that does not resolve, after symlinks, inside `folder`.

    Equivalent to os.path.realpath on every path, but each parent folder is resolved once: 100k images in a
    few folders cost one lstat each, not one per path component."""
    base = os.path.realpath(folder)
    prefix = base if base.endswith(os.sep) else base + os.sep
    parents: dict[str, str] = {}
    bad = []
    for i, p in enumerate(paths):
        head, tail = os.path.split(os.fspath(p))
        if head not in parents:
            parents[head] = os.path.realpath(head or ".")
        real = os.path.join(parents[head], tail)
        if tail in ("", ".", "..") or os.path.islink(real):
            real = os.path.realpath(real)
        if not real.startswith(prefix):
            bad.append((i, real))
    return bad


def _shown(folder) -> str:
    real = os.path.realpath(folder)
    return f"{folder}" if real == os.path.abspath(folder) else f"{folder} (resolved {real})"


def _listing(parts: list[str]) -> str:
    more = len(parts) - LISTED
    return "; ".join(parts[:LISTED]) + (f"; and {more} more" if more > 0 else "")


def _check_csv_inside(paths, names, folder: Path, csv, column: str, fix: str) -> None:
    bad = outside(paths, folder)
    if not bad:
        return
    # data row i is line i + 2 of the file: the header is line 1
    rows = [f"line {i + 2}: {names[i]!r} -> {real}" for i, real in bad]
    raise DataSourceError(
        f"{csv}: {len(bad)} image path{'s' * (len(bad) != 1)} in {column} lead{'s' * (len(bad) == 1)} outside "
        f"{_shown(folder)}, and kit reads images only inside that folder: {_listing(rows)}. Fix: {fix}")


def _train_fix(spec: DataSpec) -> str:
    where = f"column {spec.path_column!r} (data.path_column)" if spec.path_column else \
        f"column {spec.id_column!r} (data.id_column) and data.image_suffix (now {spec.image_suffix!r})"
    return (f"make {where} name files relative to data.image_dir ({spec.image_dir!r}), with no '..', no absolute "
            f"paths and no symlinks leading out of it, or move the images into it and fix or drop those rows")


def _check_folder_inside(files: list[str], folder: Path) -> None:
    bad = outside(files, folder)
    if not bad:
        return
    listed = [f"{files[i]} -> {real}" for i, real in bad]
    raise DataSourceError(
        f"{len(bad)} image file{'s' * (len(bad) != 1)} in {_shown(folder)} lead{'s' * (len(bad) == 1)} outside it "
        f"through symlinks, and kit reads images only inside that folder: "
        f"{_listing(listed)}. Fix: replace those symlinks by the image files themselves, or remove them")
