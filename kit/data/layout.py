"""A dataset folder's layout as kit.data.sources reads it, found from what the folder holds (for `kit init`).

    layout = detect_layout(Path("data/leaves"))   # .data: the recipe's data: keys; .notes: what was found

An ImageFolder tree (root/train/<class>/* or root/<class>/*, test images in a flat root/test*/), labels in the file
names (root/train/cat.123.jpg, dogs-vs-cats: data.label_pattern), or Kaggle's (train.csv + image folders +
sample_submission.csv), whose columns are found from what they hold: ids =
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
    table: Optional[pd.DataFrame] = None  # kaggle: the labels CSV, every cell a string
    why: dict = field(default_factory=dict)  # data: key -> the reason it was chosen (a comment above the key)


def detect_layout(root: Path, *, label_column=None, id_column=None, path_column=None,
                  group_column=None) -> Layout:
    """The data: section for `root` (see the module docstring) and notes on what was found."""
    inv = inventory(root)
    csv = _train_csv(root)
    if csv is not None:
        return _kaggle(root, csv, inv, label_column, id_column, path_column, group_column)
    given = [f"--{k}" for k, v in (("label-column", label_column), ("id-column", id_column),
                                  ("path-column", path_column), ("group-column", group_column)) if v]
    if given:
        raise DataError(f"{', '.join(given)} name columns of a labels CSV, and {root} holds no train.csv; "
                        f"leave them out for an ImageFolder tree, or add the CSV")
    return _labels_in_names(root, inv) or _imagefolder(root, inv)


NAME_LABEL = r"^([A-Za-z]+)[._-]"  # data.label_pattern kit init writes: the letters before the first . _ or -


def _labels_in_names(root: Path, inv: Inventory) -> Optional[Layout]:
    """The layout of labelled images named <label><.|_|-><rest> in one flat folder (root/train/ or root), with no
    labels CSV and no class folders, e.g. train/cat.123.jpg, train/dog.7.jpg; None when the names hold no such
    labels (two or more, each on two or more files, every file matched)."""
    folder = "train" if "train" in inv.folders else ""
    if any(d.startswith(f"{folder}/" if folder else "") and d != folder and not _is_test(d) for d in inv.folders
           if d):
        return None  # sub-folders: an ImageFolder tree
    names = [posixpath.basename(f) for f in inv.files if posixpath.dirname(f) == folder]
    found = [re.match(NAME_LABEL, n) for n in names]
    labels = Counter(m.group(1) for m in found if m)
    if not names or not all(found) or len(labels) < 2 or min(labels.values()) < 2 or len(labels) > len(names) / 2:
        return None
    suffixes = sorted({os.path.splitext(n)[1] for n in names})
    sample_path = _sample_csv(root)
    sample = _read_csv(sample_path) if sample_path is not None else None
    layout = Layout({"source": "kaggle", "root": os.path.normpath(str(root))}, sample=sample,
                    sample_name=sample_path.name if sample_path is not None else None)
    if sample is not None and sample_path.name != DataSpec().sample_submission:
        layout.data["sample_submission"] = sample_path.name
    id_column = str(sample.columns[0]) if sample is not None and sample.shape[1] else DataSpec().id_column
    label_column = str(sample.columns[1]) if sample is not None and sample.shape[1] == 2 else DataSpec().label_column
    defaults = DataSpec()
    for key, value in (("image_dir", folder or "."), ("label_pattern", NAME_LABEL), ("id_column", id_column),
                       ("label_column", label_column)):
        if value != getattr(defaults, key):
            layout.data[key] = value
    layout.why["label_pattern"] = (f"labels in the file names: {len(names):,} images in {folder or '.'}/ named "
                                   f"<label>.<n> ({', '.join(f'{k}: {v:,}' for k, v in labels.most_common(6))})")
    test_dir, test_suffix = _kaggle_test(inv, sample, sample_path, None, layout.notes)
    if test_dir != defaults.test_dir:
        layout.data["test_dir"] = test_dir
    suffix = test_suffix if test_suffix is not None else (suffixes[0] if len(suffixes) == 1 else "")
    if suffix != defaults.image_suffix:
        layout.data["image_suffix"] = suffix
    layout.notes.insert(0, f"no labels CSV: the labels are in the file names of {folder or '.'}/ "
                           f"({', '.join(f'{k}: {v:,}' for k, v in labels.most_common(6))})")
    layout.table = pd.DataFrame({id_column: [os.path.splitext(n)[0] for n in names],
                                 label_column: [m.group(1) for m in found]})
    return layout


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
    """As kit.data.sources and kit.submit read them (kit.readers.read_csv): every cell a string ('007' stays '007'),
    'NA' a class name; pandas drops a UTF-8 byte-order mark, so a column is 'id', not '\\ufeffid'."""
    from kit.readers import read_csv
    return read_csv(path, fix="save it as UTF-8 CSV")


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


def _kaggle(root: Path, csv: Path, inv: Inventory, label_column, id_column, path_column, group_column=None) -> Layout:
    df = _read_csv(csv)
    if df.empty:
        raise DataError(f"{csv} has no rows; it should list the labelled images (an id and a label column)")
    sample_path = _sample_csv(root)
    sample = _read_csv(sample_path) if sample_path is not None else None
    layout = Layout({"source": "kaggle", "root": os.path.normpath(str(root))}, sample=sample,
                    sample_name=sample_path.name if sample_path is not None else None, table=df)
    if csv.name != DataSpec().train_csv:
        layout.data["train_csv"] = csv.name
    if sample_path is not None and sample_path.name != DataSpec().sample_submission:
        layout.data["sample_submission"] = sample_path.name
    given = {"--id-column": id_column, "--label-column": label_column, "--path-column": path_column,
             "--group-column": group_column}
    for option, col in given.items():
        if col is not None and col not in df.columns:
            raise DataError(f"{csv} has no column {col!r} ({option}); its columns are {list(df.columns)}")
    distinct = {c: df[c].nunique() for c in df.columns}
    matches = {c: locate(_spread(df[c]), inv, inv.folders) for c in df.columns
               if distinct[c] >= 0.9 * len(df) or c in (id_column, path_column)}
    idc = id_column or _id_column(df, csv, sample, sample_path, matches)
    folder, suffix, pathc = _train_images(df, csv, idc, path_column, matches, inv)
    labelc = label_column or _label_column(df, csv, {idc, pathc, group_column} - {None}, sample)
    # ids that carry their extension (image_suffix "") may name test files without one: the test ids then take
    # the extension the test files have, and the labelled images are read from the ids as file names
    ext_ids = pathc is None and suffix == ""
    try:
        test_dir, test_suffix = _kaggle_test(inv, sample, sample_path, None if pathc or ext_ids else suffix,
                                             layout.notes)
    except DataError:
        # the test files take another extension than the labelled ones (ids + suffix): a column of file names,
        # when there is one, names the labelled images, and data.image_suffix is then the test files' own
        paths = [c for c, pm in matches.items() if c not in (idc, labelc) and pm.share >= FOUND_SHARE
                 and set(pm.suffixes) == {""}]
        if pathc or len(paths) != 1:
            raise
        pathc, folder, suffix = paths[0], matches[paths[0]].folder, ""
        test_dir, test_suffix = _kaggle_test(inv, sample, sample_path, None, layout.notes)
        layout.why["path_column"] = (f"column {pathc!r} names the labelled images' files; the test ids of "
                                     f"{layout.sample_name} name files with another extension ({test_suffix}), "
                                     f"which data.image_suffix gives")
    if ext_ids and test_suffix:
        pathc = idc
        layout.why["path_column"] = (f"the ids of {csv.name} name files with their extension, the test ids of "
                                     f"{layout.sample_name} without one ({test_suffix}): the labelled images are "
                                     f"read by name from column {idc!r}, and data.image_suffix names the test files")
    defaults = DataSpec()
    labels = {"label_columns": labelc} if isinstance(labelc, list) else {"label_column": labelc}
    for key, value in (("id_column", idc), *labels.items(), ("path_column", pathc), ("image_dir", folder or "."),
                       ("image_suffix", suffix)):
        if value != getattr(defaults, key):
            layout.data[key] = value
    if isinstance(labelc, list):
        layout.why["label_columns"] = (f"one 0/1 column per class or label ({len(labelc)})"
                                       + (f", as {layout.sample_name}'s columns" if sample is not None and
                                          [str(c) for c in sample.columns[1:]] == labelc else ""))
    if test_dir != defaults.test_dir:
        layout.data["test_dir"] = test_dir
    if pathc and test_suffix and test_suffix != defaults.image_suffix:
        layout.data["image_suffix"] = test_suffix
    targets = {idc, pathc, *(labelc if isinstance(labelc, list) else [labelc])} - {None}
    groupc, why = (group_column, f"--group-column {group_column}: folds keep each of its groups together and the "
                                 f"holdout takes whole groups") if group_column else detect_group_column(df, targets)
    if groupc:
        layout.data["group_column"] = groupc
        layout.why["group_column"] = why
    elif why:
        layout.notes.append(why)
    where = f"{folder or '.'}/<{pathc or idc}>{'' if pathc else suffix}"
    what = f"one 0/1 column per class or label, {labelc}" if isinstance(labelc, list) else f"labels in {labelc!r}"
    layout.notes.insert(0, f"{csv.name}: {len(df):,} rows; ids in column {idc!r}, {what}, images {where}")
    return layout


# names of a column that groups images (one patient's, one subject's): folds keep a group together
GROUP_WORDS = ("patient", "subject", "group", "individual", "case", "study", "animal", "person", "user", "owner",
               "family")
MIN_GROUPS = 10  # a group column names many patients or subjects; fewer distinct values are metadata
GROUP_REPEAT = 1.5  # a column ending in "id" groups the images when it holds at least this many rows per value


def _group_word(column: str) -> Optional[str]:
    """The group word `column` reads as (patient_id, PatientID, subject, case-no), or None."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", column).lower()
    for part in re.split(r"[^a-z0-9]+", spaced):
        for w in GROUP_WORDS:
            if part == w or part == w + "s" or re.fullmatch(rf"{w}(id|ids|no|name|number|nr)", part):
                return w
    return None


def detect_group_column(df: pd.DataFrame, exclude: set) -> tuple[Optional[str], str]:
    """(data.group_column or None, why; or None and a note on a group-like column left out). A column other than
    the id, path and target columns whose name reads as a group (GROUP_WORDS: patient_id, subject) and that
    repeats, or whose name ends in "id" and holds GROUP_REPEAT or more rows per value; of several, the one with the
    fewest values (the coarsest grouping keeps the finer ones together too). Metadata (sex, age, site) is not a
    group: its name says so."""
    found, notes = [], []
    for c in df.columns:
        if c in exclude:
            continue
        word = _group_word(str(c))
        ends_id = re.search(r"id$", str(c), re.I) is not None
        if not word and not ends_id:
            continue
        values = df[c].astype(str).str.strip()
        n = values[values != ""].nunique()
        per = len(df) / max(n, 1)
        flag = set(values[values != ""]) <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}
        if not (word and n < len(df) or ends_id and per >= GROUP_REPEAT) or flag or \
                n < min(MIN_GROUPS, max(2, len(df) // 4)):
            continue  # a flag or a handful of values is metadata (PetFinder's 0/1 "Subject Focus"), not a group
        empty = int((values == "").sum())
        if empty:
            notes.append(f"column {c!r} reads as a group ({n:,} values, {per:.1f} rows each) but {empty:,} of its "
                         f"rows are empty: not used as data.group_column (fill them, then kit init --group-column "
                         f"{c})")
            continue
        found.append((0 if word else 1, n, str(c), word, per))
    if not found:
        return None, "; ".join(notes)
    _, n, c, word, per = min(found)
    named = f"its name reads as a {word} column" if word else "its name ends in 'id'"
    thing = word or "group"
    others = [f for f in found if f[2] != c]
    also = (f"; also group-like: {', '.join(repr(f[2]) for f in others)} (fewer values in {c!r}: its groups keep "
            f"theirs together; --group-column to choose)" if others else "")
    return c, (f"column {c!r} groups the images: {named} and it repeats ({n:,} values for {len(df):,} rows, "
               f"{per:.1f} images each). Folds keep each {thing}'s images together and the holdout takes whole "
               f"groups, so validation scores only unseen {thing}s (one {thing}'s images on both sides would score "
               f"memory, not skill){also}; --group-column to choose another")


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


def _label_column(df, csv: Path, exclude: set, sample):
    """The target column's name, or the list of 0/1 columns (one per class or label) that are the target."""
    cols = [c for c in df.columns if c not in exclude]
    values = {c: set(df[c]) - {""} for c in cols}
    zero_one = [c for c in cols if values[c] and values[c] <= {"0", "1", "0.0", "1.0"}]
    few = [c for c in cols if 2 <= len(values[c]) <= max(2, len(df) // 2)]
    if sample is not None and len(sample.columns) == 2 and len(values.get(sample.columns[1], ())) >= 2:
        return sample.columns[1]  # the submission's label column, by name (even with many classes)
    if sample is not None and len(sample.columns) > 2:
        classes = [str(c) for c in sample.columns[1:]]  # a column per class or label
        if all(c in zero_one for c in classes):
            return classes  # the sample's columns are the train.csv's 0/1 columns: one per class or label
        by_values = [c for c in few if values[c] == set(classes)] or [c for c in few if values[c] <= set(classes)]
        if len(by_values) == 1:
            return by_values[0]
        by_tags = [c for c in cols if values[c] and {t for v in values[c] for t in v.split()} <= set(classes)]
        if len(by_tags) == 1:
            return by_tags[0]  # tags of the sample's labels
    if len(few) == 1:
        return few[0]
    if len(few) > 1 and all(c in zero_one for c in few):
        return few  # one 0/1 column per class (one-hot) or per label
    if not few and sample is not None and len(sample.columns) == 2 and sample.columns[1] in values:
        return sample.columns[1]  # the submission's column, though it holds one value: the target check says so
    counts = {c: len(values[c]) for c in (few or cols)}
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
