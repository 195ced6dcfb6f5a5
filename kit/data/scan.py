"""Every image file of a competition checked before training, and the recipe's policy for the bad ones.

    bad = scan_sources(sources)                                      # [] when every image decodes
    sources = apply_bad_images(sources, bad, recipe.data.bad_images, where="recipes/x.yaml")

Why before training: the loader decodes images only in its workers, mid-epoch, and stops at the first bad one,
so a folder with four bad files took four runs to learn about them. The scan decodes each file once with
kit.data.images.verify_image (the header, the pixel limit, then every byte: a truncated file passes the header),
in threads: Pillow releases the GIL while it decodes, so threads overlap on free cores and on disk reads.
Verdicts are cached per file by (absolute path, size, mtime_ns) in cache_dir()/scan/<folder digest>.json, one
file per dataset folder, so a second run only stats its files; a changed file is decoded again. In-memory
images (digits) are not files and are not scanned.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from kit.data.images import MAX_PIXELS, verify_image
from kit.data.sources import Sources
from kit.errors import DataError, ImageReadError

SCAN_VERSION = 1  # bump when verify_image decides differently: verdicts cached by other versions are dropped
CHUNK = 32  # images per task handed to a thread: 1M images make 31k tasks, and progress moves every chunk
PROGRESS_MIN = 1_000  # images to decode before the default progress bar is shown (~1 s of decoding)
LISTED = 50  # bad images named in one error message; the rest are counted

Progress = Union[Callable[[int, int], None], bool, None]


@dataclass(frozen=True)
class BadImage:
    split: str  # "train" (a row of sources.train) or "test" (a row of sources.test)
    row: int  # row of that table, 0-based (a Kaggle train.csv row r is line r + 2 of the file)
    id: str
    path: str
    reason: str  # what the decoder said, e.g. "OSError: image file is truncated (27 bytes not processed)"

    def describe(self) -> str:
        return f"{self.split} row {self.row} (id {self.id!r}, {self.path}): {self.reason}"


def check_image(path) -> Optional[str]:
    """Why the file at `path` cannot be used as an image, or None when read_image will decode it."""
    try:
        verify_image(path)
    except ImageReadError as e:
        return _reason(e, path)
    except Exception as e:  # anything else Pillow raises on this one file: the file is bad, the scan goes on
        return f"{type(e).__name__}: {e}"
    return None


def _reason(e: ImageReadError, path) -> str:
    cause = e.__cause__
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    prefix = f"cannot read image {path}: "
    return str(e)[len(prefix):] if str(e).startswith(prefix) else str(e)


def scan_sources(sources: Sources, *, workers: Optional[int] = None, progress: Progress = None) -> list[BadImage]:
    """The labelled and test images of `sources` that cannot be decoded, ordered by split and row.

    workers: decoding threads (default: one per CPU core). progress: called as progress(done, total) while
    files are decoded (cached verdicts are not counted); None shows a rich bar on a terminal when at least
    PROGRESS_MIN files need decoding; False shows nothing."""
    rows = [(split, row, str(table.ids[row]), item)
            for split, table in (("train", sources.train), ("test", sources.test)) if table is not None
            for row, item in enumerate(table.items) if not isinstance(item, np.ndarray)]
    if not rows:
        return []
    paths = [os.path.abspath(os.fspath(item)) for _, _, _, item in rows]
    folder = _dataset_folder(paths)
    cache_file = _cache_file(folder)
    known = _load_cache(cache_file)
    verdicts: dict[str, Optional[str]] = {}
    todo, stats = [], {}
    for p in dict.fromkeys(paths):  # a file listed twice is decoded once
        try:
            st = os.stat(p)
        except OSError as e:  # vanished since the sources were listed, or unreadable: not cached
            verdicts[p] = f"{type(e).__name__}: {e.strerror or e}"
            continue
        stats[p] = [st.st_size, st.st_mtime_ns]
        entry = known.get(p)
        if entry is not None and entry[:2] == stats[p]:
            verdicts[p] = entry[2]
        else:
            todo.append(p)
    decoded: dict[str, Optional[str]] = {}
    try:
        _decode_all(todo, workers, progress, decoded)
    finally:  # an interrupted scan keeps what it decoded: the next run starts where this one stopped
        if decoded:
            known.update({p: stats[p] + [r] for p, r in decoded.items()})
            _save_cache(cache_file, known, folder)
    verdicts.update(decoded)
    return [BadImage(split, row, image_id, path, verdicts[p])
            for (split, row, image_id, path), p in zip(rows, paths) if verdicts[p] is not None]


def _decode_all(paths: list[str], workers, progress: Progress, out: dict) -> None:
    if not paths:
        return
    report, close = progress_reporter(progress, len(paths))
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="kit-scan")
    try:
        for chunk, reasons in zip(chunks, pool.map(_check_chunk, chunks)):
            out.update(zip(chunk, reasons))
            report(len(out))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop the queued chunks, finish the running ones
        close()


def _check_chunk(paths: list[str]) -> list[Optional[str]]:
    return [check_image(p) for p in paths]


def progress_reporter(progress: Progress, total: int, label: str = "checking images"):
    """(report(done), close()) for `progress`: a callable progress(done, total); None: a rich bar on a terminal from
    PROGRESS_MIN items; False: nothing. Shared by the scan and the decoded-image cache."""
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    from rich.console import Console
    console = Console(stderr=True)
    if progress is False or total < PROGRESS_MIN or not console.is_terminal:
        return (lambda done: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
    bar = Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
              transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return (lambda done: bar.update(task, completed=done)), bar.stop


# ---------------------------------------------------------------- cache

def _cache_header() -> dict:
    import PIL
    return {"version": SCAN_VERSION, "pillow": PIL.__version__, "max_pixels": MAX_PIXELS}


def _dataset_folder(paths: list[str]) -> str:
    """The folder holding every image: one cache file per dataset, shared by its subsets (data.limit) and its
    test set. (The common path of the lexically first and last paths is that of them all.)"""
    return os.path.commonpath([os.path.dirname(p) for p in (min(paths), max(paths))])


def _cache_file(folder: str) -> Path:
    from kit.runtime import cache_dir  # kit.runtime imports torch: only when a scan runs
    return cache_dir() / "scan" / f"{hashlib.sha256(folder.encode()).hexdigest()[:20]}.json"


def _load_cache(path: Path) -> dict:
    """{absolute path: [size, mtime_ns, reason or None]}; empty when missing, unreadable or from another version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # a cache: a damaged one is rebuilt
        return {}
    if not isinstance(data, dict) or data.get("header") != _cache_header() or not isinstance(data.get("images"), dict):
        return {}
    return {p: v for p, v in data["images"].items() if isinstance(v, list) and len(v) == 3}


def _save_cache(path: Path, known: dict, folder: str) -> None:
    from kit.rundir import write_text_atomic
    text = json.dumps({"header": _cache_header(), "folder": folder, "images": known}, separators=(",", ":"))
    try:
        write_text_atomic(path, text)
    except OSError as e:  # a read-only or full cache disk costs the next run a rescan, not this run
        import warnings
        warnings.warn(f"could not save the image scan cache {path}: {e}", stacklevel=3)


# ---------------------------------------------------------------- the recipe's policy (data.bad_images)

def apply_bad_images(sources: Sources, bad: list[BadImage], policy: str, where: str = "the recipe") -> Sources:
    """`sources` as data.bad_images says: fail -> DataError listing every bad image (up to LISTED) and how to
    proceed; skip -> the same sources without those rows (each label stays with its own image).

    Bad test images cannot be skipped when a sample submission lists the test ids (the submission needs a row for
    each): that is a DataError under both policies. `where` names the recipe file in the messages."""
    if not bad:
        return sources
    if policy not in ("fail", "skip"):
        raise ValueError(f"data.bad_images must be fail or skip, got {policy!r}")
    train_bad = [b for b in bad if b.split == "train"]
    test_bad = [b for b in bad if b.split == "test"]
    fixed_test = bool(test_bad) and sources.sample_submission is not None
    if policy == "fail" or fixed_test:
        raise DataError(_bad_message(sources, bad, train_bad, test_bad, fixed_test, policy, where))
    rows = {b.row for b in train_bad}
    keep = [r for r in range(len(sources.train)) if r not in rows]
    if not keep:
        raise DataError(f"none of the {len(sources.train)} labelled images can be decoded "
                        f"(e.g. {bad[0].describe()}); check data.root, data.image_dir and the files themselves")
    test, solution = sources.test, sources.test_solution
    if test_bad:
        drop = {b.row for b in test_bad}
        test = test.subset([r for r in range(len(test)) if r not in drop])
        if solution is not None:
            solution = solution[solution["id"].isin(set(test.ids))].reset_index(drop=True)
    return dataclasses.replace(sources, train=sources.train.subset(keep), test=test, test_solution=solution)


def _bad_message(sources, bad, train_bad, test_bad, fixed_test: bool, policy: str, where: str) -> str:
    listed = "; ".join(b.describe() for b in bad[:LISTED]) + (f"; and {len(bad) - LISTED} more"
                                                              if len(bad) > LISTED else "")
    counts = " and ".join(f"{n} {kind} image{'s' * (n != 1)}"
                          for n, kind in ((len(train_bad), "labelled"), (len(test_bad), "test")) if n)
    head = f"{counts} cannot be decoded (data.bad_images: {policy} in {where}): {listed}. "
    if fixed_test:
        return head + (f"Fix: the submission needs a prediction for every id of {sources.sample_submission_path}, "
                       f"so replace the test files with readable images (data.bad_images: skip drops only "
                       f"labelled images)" + ("; fix or remove the labelled ones, or skip them" if train_bad else ""))
    return head + (f"Fix: replace or remove these files (and their rows in the labels CSV), or set "
                   f"data.bad_images: skip in {where} to train without them (they are then listed in the run "
                   f"directory's bad_images.csv)")
