"""A dataset folder's layout as kit.data.sources reads it, found from what the folder holds (for `kit init`).

    layout = detect_layout(Path("data/leaves"))   # .data: the recipe's data: keys; .notes: what was found

An ImageFolder tree (root/train/<class>/* or root/<class>/*, test images in a flat root/test*/), or Kaggle's
(train.csv + image folders + sample_submission.csv), whose columns are found from what they hold: ids =
sample_submission's first column; a column whose values name image files (with or without an extension) gives
image_dir and image_suffix, or is the path column; the label column is the other one with few distinct values.
Whatever is missing or ambiguous is a DataError naming the file, the column and the option that settles it.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from kit.data.sources import IMAGE_EXTENSIONS
from kit.errors import DataError
from kit.recipe import DataSpec

VALUE_SAMPLE = 200  # values of a CSV column looked up among the image files
FOUND_SHARE = 0.5  # a column names image files when at least half of its sampled values do
FOLDER_DEPTH = 3  # folders below root considered as image_dir / test_dir
SAMPLE_NAMES = ("sample_submission.csv", "sampleSubmission.csv")


@dataclass(frozen=True)
class Inventory:
    files: frozenset  # image files under root, posix paths relative to it
    folders: tuple  # folders holding them and their parents, "" = root, shallowest first (at most FOLDER_DEPTH)
    suffixes: tuple  # extensions as spelled on disk, most common first ('.jpg', '.JPG', ...)


@dataclass(frozen=True)
class Match:
    folder: str  # where the values name files, relative to root ("" = root)
    suffixes: Counter  # extension appended ("" = the value is the file name) -> values found with it
    checked: int

    @property
    def found(self) -> int:
        return sum(self.suffixes.values())

    @property
    def share(self) -> float:
        return self.found / max(self.checked, 1)


@dataclass
class Layout:
    data: dict  # data: keys of the recipe (source and root, then only those differing from DataSpec's defaults)
    notes: list = field(default_factory=list)  # what was found, for the header comment
    sample: Optional[pd.DataFrame] = None
    sample_name: Optional[str] = None


def detect_layout(root: Path, *, label_column=None, id_column=None, path_column=None) -> Layout:
    """The data: section for `root` (see the module docstring) and notes on what was found."""
    inv = inventory(root)
    csv = _train_csv(root)
    if csv is not None:
        return _kaggle(root, csv, inv, label_column, id_column, path_column)
    given = [f"--{k}" for k, v in (("label-column", label_column), ("id-column", id_column),
                                  ("path-column", path_column)) if v]
    if given:
        raise DataError(f"{', '.join(given)} name columns of a labels CSV, and {root} holds no train.csv; "
                        f"leave them out for an ImageFolder tree, or add the CSV")
    return _imagefolder(root, inv)


def inventory(root: Path) -> Inventory:
    files, folders, suffixes = set(), set(), Counter()
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(here).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        images = [n for n in names if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if not images:
            continue
        files.update(posixpath.join(rel, n) for n in images)
        suffixes.update(os.path.splitext(n)[1] for n in images)
        parts = rel.split("/") if rel else []
        folders.update("/".join(parts[:i]) for i in range(min(len(parts), FOLDER_DEPTH) + 1))
    ordered = tuple(sorted(folders, key=lambda d: (d.count("/") + bool(d), _is_test(d), d)))
    return Inventory(frozenset(files), ordered, tuple(s for s, _ in suffixes.most_common()))


def _is_test(folder: str) -> bool:
    return posixpath.basename(folder).lower().startswith("test")


def _spread(values, k: int = VALUE_SAMPLE) -> list[str]:
    """At most k of the non-empty `values`, evenly spread over the table (not only its head)."""
    values = [str(v) for v in values if str(v) != ""]
    if len(values) <= k:
        return values
    return [values[i] for i in np.linspace(0, len(values) - 1, k).round().astype(int)]


def locate(values, inv: Inventory, folders=None, suffixes=None) -> Match:
    """The folder under which most of `values` (plus one of `suffixes`, "" first) name image files."""
    folders = inv.folders if folders is None else folders
    suffixes = ("",) + inv.suffixes if suffixes is None else suffixes
    names = [posixpath.normpath(v) for v in values]
    best = Match("", Counter(), len(names))
    for d in folders:
        prefix = f"{d}/" if d else ""
        tally = Counter()
        for v in names:
            hit = next((s for s in suffixes if prefix + v + s in inv.files), None)
            if hit is not None:
                tally[hit] += 1
        if sum(tally.values()) > best.found:
            best = Match(d, tally, len(names))
    return best


def _one_suffix(m: Match, what: str, fix: str) -> str:
    """The one extension `m` found, or a DataError when the files need several (kit appends one)."""
    if len(m.suffixes) > 1:
        counts = ", ".join(f"{s or '(none)'} for {n}" for s, n in m.suffixes.most_common())
        raise DataError(f"{what} name files with different extensions ({counts} of {m.checked} sampled), and kit "
                        f"appends one data.image_suffix to every id; {fix}")
    return next(iter(m.suffixes), "")


# ---------------------------------------------------------------- kaggle


def _read_csv(path: Path) -> pd.DataFrame:
    # as kit.data.sources and kit.submit read them: every cell a string ('007' stays '007'), 'NA' a class name;
    # pandas drops a UTF-8 byte-order mark, so a column is 'id', not '\ufeffid'
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as CSV: {' '.join(str(e).split())}; save it as UTF-8 CSV") from None


def _train_csv(root: Path) -> Optional[Path]:
    if (root / "train.csv").is_file():
        return root / "train.csv"
    others = [p for p in sorted(root.glob("*.csv")) if re.search(r"train|label", p.name, re.I)
              and not re.search(r"sample|submission|test|solution", p.name, re.I)]
    return others[0] if len(others) == 1 else None


def _sample_csv(root: Path) -> Optional[Path]:
    named = [root / n for n in SAMPLE_NAMES if (root / n).is_file()]
    found = named or [p for p in sorted(root.glob("*.csv")) if re.search(r"sample", p.name, re.I)]
    return found[0] if found else None


def _kaggle(root: Path, csv: Path, inv: Inventory, label_column, id_column, path_column) -> Layout:
    df = _read_csv(csv)
    if df.empty:
        raise DataError(f"{csv} has no rows; it should list the labelled images (an id and a label column)")
    sample_path = _sample_csv(root)
    sample = _read_csv(sample_path) if sample_path is not None else None
    layout = Layout({"source": "kaggle", "root": os.path.normpath(str(root))}, sample=sample,
                    sample_name=sample_path.name if sample_path is not None else None)
    if csv.name != DataSpec().train_csv:
        layout.data["train_csv"] = csv.name
    if sample_path is not None and sample_path.name != DataSpec().sample_submission:
        layout.data["sample_submission"] = sample_path.name
    given = {"--id-column": id_column, "--label-column": label_column, "--path-column": path_column}
    for option, col in given.items():
        if col is not None and col not in df.columns:
            raise DataError(f"{csv} has no column {col!r} ({option}); its columns are {list(df.columns)}")
    distinct = {c: df[c].nunique() for c in df.columns}
    matches = {c: locate(_spread(df[c]), inv, inv.folders) for c in df.columns
               if distinct[c] >= 0.9 * len(df) or c in (id_column, path_column)}
    idc = id_column or _id_column(df, csv, sample, sample_path, matches)
    folder, suffix, pathc = _train_images(df, csv, idc, path_column, matches, inv)
    labelc = label_column or _label_column(df, csv, {idc, pathc}, sample)
    defaults = DataSpec()
    for key, value in (("id_column", idc), ("label_column", labelc), ("path_column", pathc),
                       ("image_dir", folder or "."), ("image_suffix", suffix)):
        if value != getattr(defaults, key):
            layout.data[key] = value
    test_dir, test_suffix = _kaggle_test(inv, sample, sample_path, None if pathc else suffix, layout.notes)
    if test_dir != defaults.test_dir:
        layout.data["test_dir"] = test_dir
    if pathc and test_suffix and test_suffix != defaults.image_suffix:
        layout.data["image_suffix"] = test_suffix
    where = f"{folder or '.'}/<{pathc or idc}>{'' if pathc else suffix}"
    layout.notes.insert(0, f"{csv.name}: {len(df):,} rows; ids in column {idc!r}, labels in {labelc!r}, "
                           f"images {where}")
    return layout


def _id_column(df, csv: Path, sample, sample_path, matches: dict) -> str:
    cols = list(df.columns)
    if sample is not None and len(sample.columns) and sample.columns[0] in cols:
        return sample.columns[0]  # the submission's ids are the train ids' kind
    if DataSpec().id_column in cols:
        return DataSpec().id_column
    naming = [c for c, m in matches.items() if m.share >= FOUND_SHARE]
    if len(naming) == 1:
        return naming[0]
    ends_id = [c for c in cols if re.search(r"id$", c, re.I) and df[c].nunique() == len(df)]
    if len(ends_id) == 1:
        return ends_id[0]
    first = f"the first column of {sample_path}, {sample.columns[0]!r}, is not one of them" if sample is not None \
        else "there is no sample_submission.csv to name it"
    unique = [c for c in cols if df[c].nunique() == len(df)]
    raise DataError(f"cannot tell which column of {csv} holds the image ids: its columns are {cols} and {first}; "
                    f"columns with a distinct value in every row: {unique}; pass --id-column NAME")


def _train_images(df, csv: Path, idc: str, path_column, matches: dict, inv: Inventory):
    """(image_dir relative to root, image_suffix, path column or None) of the labelled images."""
    if path_column is not None:
        m = matches[path_column]
        if m.found == 0 or "" not in m.suffixes:
            raise DataError(f"values of column {path_column!r} of {csv} (--path-column) name no image file under "
                            f"{csv.parent}, e.g. {_example(df, path_column)}; a path column holds file names "
                            f"with their extension, relative to a folder under {csv.parent}")
        return m.folder, "", path_column
    m = matches.get(idc)
    if m is not None and m.share >= FOUND_SHARE:
        fix = "rename the files to one extension, or add a column of file names and pass --path-column"
        return m.folder, _one_suffix(m, f"ids in column {idc!r} of {csv}", fix), None
    paths = [c for c, pm in matches.items() if c != idc and pm.share >= FOUND_SHARE and set(pm.suffixes) == {""}]
    if len(paths) == 1:
        return matches[paths[0]].folder, "", paths[0]
    if len(paths) > 1:
        raise DataError(f"several columns of {csv} name image files: {paths}; pass --path-column NAME")
    raise DataError(f"ids in column {idc!r} of {csv} match no image file under {csv.parent}, e.g. "
                    f"{_example(df, idc)} (looked for <folder>/<id>[extension] in "
                    f"{_folders(inv)}, extensions {', '.join(inv.suffixes) or 'none found'}); pass --id-column for "
                    f"another column, --path-column for a column of file paths, or fix the ids")


def _example(df, col: str) -> str:
    first = next((v for v in df[col] if v != ""), None)
    return "no value (the column is empty)" if first is None else repr(first)


def _folders(inv: Inventory) -> str:
    shown = [f"{d or '.'}/" for d in inv.folders[:6]]
    return ", ".join(shown) + (f" and {len(inv.folders) - 6} more" if len(inv.folders) > 6 else "") or "no folder"


def _label_column(df, csv: Path, exclude: set, sample) -> str:
    cols = [c for c in df.columns if c not in exclude]
    values = {c: set(df[c]) - {""} for c in cols}
    few = [c for c in cols if 2 <= len(values[c]) <= max(2, len(df) // 2)]
    if sample is not None and len(sample.columns) == 2 and len(values.get(sample.columns[1], ())) >= 2:
        return sample.columns[1]  # the submission's label column, by name (even with many classes)
    if sample is not None and len(sample.columns) > 2:
        classes = {str(c) for c in sample.columns[1:]}  # a probability column per class: the labels' values
        by_values = [c for c in few if values[c] == classes] or [c for c in few if values[c] <= classes]
        if len(by_values) == 1:
            return by_values[0]
    if len(few) == 1:
        return few[0]
    counts = {c: len(values[c]) for c in (few or cols)}
    if len(few) > 1 and all(values[c] <= {"0", "1", "0.0", "1.0"} for c in few):
        raise DataError(f"{csv} holds 0/1 columns {few}, one-hot labels; kit reads one column of class names: add "
                        f"one (pandas: df['label'] = df[{few}].astype(float).idxmax(axis=1)) and pass --label-column "
                        f"label")
    what = f"{len(few)} columns could be the label" if few else "no column looks like a label"
    raise DataError(f"{what} in {csv}: distinct values per column {counts} (a label column has 2 to "
                    f"{max(2, len(df) // 2)}, i.e. at most half the {len(df)} rows); pass --label-column NAME")


def _kaggle_test(inv: Inventory, sample, sample_path, suffix: Optional[str], notes: list):
    """(test_dir or None, the suffix test ids need or None): sample_submission's ids found as files."""
    if sample is None:
        flat = [d for d in inv.folders if d and _is_test(d)]
        notes.append(f"test: {flat[0]}/ (no sample_submission.csv: ids from file names)" if flat
                     else "test: no sample_submission.csv and no test folder: no test set, no submission")
        return (flat[0] if flat else None), None
    if sample.shape[1] == 0 or sample.empty:
        raise DataError(f"{sample_path} is empty; it should list the test ids in its first column")
    ids = _spread(sample.iloc[:, 0])
    folders = sorted(inv.folders, key=lambda d: (not _is_test(d), d.count("/"), d))  # test folders first
    m = locate(ids, inv, folders, None if suffix is None else (suffix,))
    if m.found == 0:
        other = locate(ids, inv, folders) if suffix is not None else m
        hint = (f"; they are files with extension {', '.join(other.suffixes)} in {other.folder or '.'}/, but the "
                f"labelled images take {suffix!r}: kit appends one data.image_suffix to both") if other.found else ""
        fix = "rename the test files" if other.found else f"put the test images in a folder under {sample_path.parent}"
        raise DataError(f"ids in the first column ({sample.columns[0]!r}) of {sample_path} match no image file "
                        f"(looked in {_folders(inv)}){hint}; {fix}, or fix the ids")
    found = _one_suffix(m, f"test ids in {sample_path}", "rename the test files to one extension")
    notes.append(f"test: {m.folder or '.'}/<id>{found}, the {len(sample):,} ids of {sample_path.name}")
    return m.folder or ".", found


def submit_format(sample: pd.DataFrame, sample_name: str, classes) -> tuple[str, str]:
    """('label' or 'proba', a comment) from the sample submission's columns."""
    rest = [str(c) for c in sample.columns[1:]]
    if not rest:
        raise DataError(f"{sample_name} has only the column {sample.columns[0]!r}; it needs a label column or "
                        f"one probability column per class")
    if len(rest) == 1:
        odd = [v for v in _spread(sample[rest[0]], 20) if v not in classes]
        return "label", (f"one label column, {rest[0]!r}" + (
            f"; its values (e.g. {odd[0]!r}) are not class names: if the competition scores a probability, kit "
            f"writes the predicted class there" if odd else ""))
    missing, extra = sorted(set(classes) - set(rest)), sorted(set(rest) - set(classes))
    if missing or extra:
        raise DataError(f"{sample_name} has {len(rest)} probability columns, one per class, but they are not the "
                        f"training labels: columns without a label {extra[:5]}, labels without a column "
                        f"{missing[:5]}; make the label column's values the sample's column names, or pass "
                        f"--label-column for another column")
    return "proba", f"one probability column per class ({len(rest)})"


# ---------------------------------------------------------------- imagefolder


def _imagefolder(root: Path, inv: Inventory) -> Layout:
    train_root = root / "train" if (root / "train").is_dir() else root
    classes = [d for d in sorted(train_root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    flat_tests = [d for d in inv.folders if "/" not in d and d and _is_test(d)]
    test_dir = "test" if "test" in flat_tests else (flat_tests[0] if flat_tests else None)
    if train_root == root:
        classes = [d for d in classes if d.name != test_dir]
    if not classes:
        below = sorted(p.parent for p in root.glob("*/train.csv"))
        hint = f"; {below[0]} holds a train.csv: run kit init {below[0]}" if below else ""
        raise DataError(f"{root} holds neither a train.csv (a Kaggle layout: train.csv + image folder + "
                        f"sample_submission.csv) nor class folders (an ImageFolder tree: {root}/train/<class>/*.jpg "
                        f"or {root}/<class>/*.jpg){hint}; arrange the images in one of those layouts")
    layout = Layout({"source": "imagefolder", "root": os.path.normpath(str(root))})
    where = "train/<class>/" if train_root != root else "<class>/"
    layout.notes.append(f"ImageFolder tree: {len(classes)} class folders {where}; "
                        + (f"test images in {test_dir}/" if test_dir else "no test folder: no test set"))
    if test_dir != DataSpec().test_dir and (test_dir is not None or (root / "test").exists()):
        layout.data["test_dir"] = test_dir
    sample_path = _sample_csv(root)
    if sample_path is not None:
        layout.sample, layout.sample_name = _read_csv(sample_path), sample_path.name
        if sample_path.name != DataSpec().sample_submission:
            layout.data["sample_submission"] = sample_path.name
    return layout
