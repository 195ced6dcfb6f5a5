"""Images in (a folder, a CSV of paths, paths, PIL images, arrays), checked as training images are, and
predictions out as a CSV in the run's submission format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import DataError


def prepare_images(images, ids=None, classes=(), suffix: str = ""):
    """(ImageTable of `images`, whether its ids name the images). `images`: a folder (its image files, ids from
    their names as folder_images gives them), one image or a list of paths, PIL images and HxWx3 uint8 arrays.
    Files are checked as training images are (kit.data.scan): every bad one is named in one ImageReadError."""
    from kit.data.sources import ImageTable
    if isinstance(images, ImageTable):
        return images, True
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        folder_ids, images = folder_images(images, suffix)
        ids = folder_ids if ids is None else ids
    if isinstance(images, (str, Path)) or _is_pil(images) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    items = [_item(i, x) for i, x in enumerate(images)]
    named = ids is not None
    ids = np.asarray([str(i) for i in ids] if named else np.arange(len(items)).astype(str))
    if len(ids) != len(items):
        raise DataError(f"{len(ids)} ids for {len(items)} images; pass one id per image")
    _check_unique(ids)
    table = ImageTable(ids, items, None, tuple(classes))
    _check_files(table)
    return table, named


def _is_pil(x) -> bool:
    from PIL import Image
    return isinstance(x, Image.Image)


def _item(i: int, x):
    if isinstance(x, (str, Path)):
        return str(x)
    if _is_pil(x):  # the conversions of kit.data.images.read_image: EXIF rotation, alpha on white, 16-bit range
        from kit.data.images import _exif_transpose, _to_rgb_array
        return _to_rgb_array(_exif_transpose(x))
    if isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[2] == 3 and x.dtype == np.uint8:
        return x
    what = f"an array of shape {x.shape} and dtype {x.dtype}" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"
    raise DataError(f"image {i} is {what}; pass file paths, PIL images or HxWx3 uint8 RGB arrays")


def _check_files(table) -> None:
    from kit.data.scan import LISTED, scan_sources
    from kit.data.sources import Sources
    from kit.errors import ImageReadError
    bad = scan_sources(Sources(train=table))
    if bad:
        listed = "; ".join(f"{b.path} (id {b.id!r}): {b.reason}" for b in bad[:LISTED])
        raise ImageReadError(f"{len(bad)} of {len(table)} images cannot be decoded: {listed}"
                             f"{f'; and {len(bad) - LISTED} more' if len(bad) > LISTED else ''}. Fix: replace or "
                             f"remove these files (and their rows in the CSV), then predict again")


def _check_unique(ids) -> None:
    values, counts = np.unique(np.asarray(ids), return_counts=True)
    if (counts > 1).any():
        n = int((counts > 1).sum())
        raise DataError(f"{n} {'ids repeat' if n > 1 else 'id repeats'}, e.g. {values[counts > 1][:5].tolist()}; "
                        f"each image needs its own id (files with the same name and different extensions?)")


def folder_images(folder, suffix: str = "") -> tuple[list[str], list[str]]:
    """(ids, paths) of the image files in `folder` (not its subfolders), sorted by name; an id is the file name
    less the run's data.image_suffix where it ends so, else less its extension (as kit names test images)."""
    from kit.data.sources import IMAGE_EXTENSIONS, outside
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--images {folder} is not a folder; pass the folder holding the images")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
    if not files:
        raise DataError(f"{folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    escaped = outside([str(p) for p in files], folder)
    if escaped:
        raise DataError(f"{len(escaped)} files in {folder} are symlinks leading outside it, and kit reads images "
                        f"only inside the folder given: {', '.join(f'{files[i].name} -> {r}' for i, r in escaped[:5])}")
    ids = [p.name[:-len(suffix)] if suffix and p.name.endswith(suffix) else p.stem for p in files]
    return ids, [str(p) for p in files]


def csv_images(csv, image_dir, id_column: str | None = None, path_column: str | None = None,
               suffix: str = "") -> tuple[list[str], list[str]]:
    """(ids, paths) of the rows of `csv`: ids from id_column (default: the first column), paths from path_column
    (default: id + suffix), relative to image_dir and resolving inside it (a DataError names each other row)."""
    from kit.data.sources import outside
    csv, image_dir = Path(csv), Path(image_dir)
    from kit.readers import read_csv
    df = read_csv(csv, fix="--csv takes a UTF-8 CSV with an id column (and a path column, or ids + suffix)")
    if not image_dir.is_dir():
        raise DataError(f"--image-dir {image_dir} is not a folder; pass the folder the CSV's paths are relative to")
    id_column = id_column or (str(df.columns[0]) if len(df.columns) else None)
    for flag, col in (("--id-column", id_column), ("--path-column", path_column)):
        if col is not None and col not in df.columns:
            raise DataError(f"{csv} has no column {col!r} ({flag}); its columns are {list(df.columns)}")
    if id_column is None or df.empty:
        raise DataError(f"{csv} lists no images; it needs an id column (and a path column, or ids + suffix)")
    names = (df[path_column] if path_column else df[id_column] + suffix).tolist()
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise DataError(f"{csv}: row {empty[0]} (line {empty[0] + 2}) has no image path; fill it or drop the row")
    paths = [image_dir / n for n in names]
    escaped = outside(paths, image_dir)
    if escaped:  # data row i is line i + 2 of the file: the header is line 1
        rows = "; ".join(f"row {i} (line {i + 2}): {names[i]!r} -> {real}" for i, real in escaped[:5])
        raise DataError(f"{csv}: {len(escaped)} image paths lead outside --image-dir {image_dir}, and kit reads "
                        f"images only inside it: {rows}. Fix: paths relative to --image-dir, with no '..', no "
                        f"absolute paths and no symlinks leading out of it")
    return df[id_column].tolist(), [str(p) for p in paths]


def write_predictions(ens, probs: pd.DataFrame, path, *, sample=None, force: bool = False) -> Path:
    """`probs` (Ensemble.predict) as a CSV in the run's submission format (submit.format: label or proba), checked
    against `sample` (its ids, order and columns, kit.submit) when given. An existing file is kept unless force."""
    from kit.predictions import Predictions
    from kit.submit import make_submission, write_submission
    from kit.rundir import check_new_file
    path = check_new_file(path, force=force)  # before the submission is made; write_submission checks again
    pred = Predictions(probs.index.astype(str), probs.to_numpy(), ens.classes)
    data = ens.recipe.data
    df = make_submission(pred, sample, fmt=ens.recipe.submit.format, task=ens.task,
                         **({} if sample is not None else {"id_column": data.id_column,
                                                           "label_column": data.label_column}))
    return write_submission(df, path, overwrite=force)
