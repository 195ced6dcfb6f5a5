"""Decoded images, once per data set: every image file decoded a single time (after the bad-image scan) into a
flat uint8 store on disk, which training and prediction read instead of decoding the file again every epoch.

    sources = attach_decoded_cache(sources, max_side=decoded_max_side(plan))     # after the scan and the plan
    table.image(row)  # HxWx3 uint8, a copy read from the store (or decoded from its file when not stored)

Why: decoding a 28 px PNG costs 85-145 us on this 2-core CPU, about what the whole albumentations pipeline after
it costs, and the loader did it for every image of every epoch; reading its 2.3 kB from the store costs ~7 us.

An entry, cache_dir()/decoded/<key>/ (key: sha256 of CACHE_FORMAT, Pillow's version, max_side and every file's
absolute path, size and mtime_ns, so a changed file gives a new entry and the old one is never read):
    pixels.bin   the HxWx3 uint8 pixels of every image back to back, read through np.memmap (raw bytes)
    index.npy    int64 [N, 3]: byte offset, height, width of image k (np.load(allow_pickle=False))
    meta.json    n, bytes, max_side, dataset folder, Pillow version, seconds taken
    complete     written last: an entry without it is never read
It is written in a `.tmp-*` folder renamed into place, as kit.features' embedding cache is. Images are in the
order of their sorted absolute paths, whatever order the tables list them in; in-memory images (digits) are
not stored.

Memory: the store is memory-mapped and each read copies one image out, so a process holds no more private
memory than the images in flight, whatever the size of the data set; the pages it reads are the kernel's page
cache (clean, dropped under memory pressure), shared by the loader's workers.

Size: an image is stored as decoded, except that a shorter side above `max_side` is shrunk to it (cv2
INTER_AREA, aspect ratio kept). decoded_max_side(recipe) gives SIDE_FACTOR (2) x the largest side any planned
transform resizes to (the eval resize S / crop_pct, multiscale TTA included): a RandomResizedCrop keeping a
quarter of the area or more then still downsamples to the input size, as it would from the original file. The
store is skipped (with a warning; images are then decoded each epoch as before) when it would not fit in its
disk's free space less DISK_RESERVE, or in `max_bytes`; the size is known before decoding, from file headers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from kit.data.images import read_image
from kit.data.scan import progress_reporter
from kit.data.sources import Sources
from kit.errors import ImageReadError
from kit.rundir import publish_dir, remove_stale_tmp

CACHE_FORMAT = 1  # bump when the layout changes or read_image decodes differently: older entries are not read
SIDE_FACTOR = 2  # shorter side kept: 2 x the largest side a planned transform resizes to (see the docstring)
DISK_RESERVE = 1 << 30  # bytes left free on the cache's disk: a cache must not fill it for the run's own files
CHUNK = 32  # images per task handed to a decoding thread
CHUNK_BYTES = 32 << 20  # ... and at most 32 MiB of decoded pixels per task (one image at least)
WINDOW_BYTES = 256 << 20  # decoded pixels waiting to be written, at most (about): the build's memory
PIXELS, INDEX, META, COMPLETE = "pixels.bin", "index.npy", "meta.json", "complete"

Progress = Union[Callable[[int, int], None], bool, None]


def cache_root() -> Path:
    from kit.runtime import cache_dir  # kit.runtime imports torch: only when a cache is attached
    return cache_dir() / "decoded"


# ---------------------------------------------------------------- reading

class DecodedStore:
    """A complete entry, read-only: image k as an HxWx3 uint8 array. It pickles as its folder and index (a
    DataLoader worker started by spawn maps the pixels itself), never as the pixels."""

    def __init__(self, folder, index: Optional[np.ndarray] = None):
        self.folder = Path(folder)
        self.index = np.load(self.folder / INDEX, allow_pickle=False) if index is None else index
        self._pixels = None  # mapped on the first read, in the process that reads

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        return {"folder": str(self.folder), "index": self.index}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["index"])

    def read(self, slot: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / PIXELS, dtype=np.uint8, mode="r")
        offset, h, w = (int(v) for v in self.index[slot])
        # a copy: transforms may write into their input, and the mapping is read-only
        return np.array(self._pixels[offset:offset + h * w * 3]).reshape(h, w, 3)


@dataclass(frozen=True, eq=False)
class DecodedRows:
    """The store's images of one table's rows: slots[row] is the row's image in `store`, -1 when not stored."""
    store: DecodedStore
    slots: np.ndarray

    def read(self, row: int) -> Optional[np.ndarray]:
        slot = int(self.slots[row])
        return None if slot < 0 else self.store.read(slot)

    def subset(self, indices) -> "DecodedRows":
        return DecodedRows(self.store, self.slots[np.asarray(indices, dtype=np.int64).reshape(-1)])


def open_entry(folder: Path) -> Optional[DecodedStore]:
    """The store of a complete entry, or None: missing, unfinished, or its pixels not the size its index says."""
    try:
        if not (folder / COMPLETE).is_file():
            return None
        store = DecodedStore(folder)
        size = os.path.getsize(folder / PIXELS)
    except (OSError, ValueError):
        return None
    idx = store.index
    ok = idx.ndim == 2 and idx.shape[1] == 3 and len(idx) > 0 and (idx >= 0).all()
    end = int((idx[:, 0] + idx[:, 1] * idx[:, 2] * 3).max()) if ok else -1
    return store if ok and end == size else None


# ---------------------------------------------------------------- attaching

def attach_decoded_cache(sources: Sources, max_side: Optional[int] = None, *, max_bytes: Optional[int] = None,
                         workers: Optional[int] = None, progress: Progress = None) -> Sources:
    """`sources` whose tables read their image files from the decoded store (built now unless cached). Call it
    after the scan: a file that cannot be decoded raises ImageReadError here.

    max_side: shorter side above which images are shrunk (None: stored as decoded). max_bytes: the largest
    store to write (None: the disk's free space less DISK_RESERVE); a larger one is skipped with a warning.
    workers: decoding threads (default: one per core). progress: progress(done, total), None for a bar on a
    terminal from kit.data.scan.PROGRESS_MIN images, False for none."""
    tables = [t for t in (sources.train, sources.test) if t is not None]
    paths = sorted({os.path.abspath(os.fspath(i)) for t in tables for i in t.items if not isinstance(i, np.ndarray)})
    if not paths:
        return sources
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
    files = [_stat(p) for p in paths]
    target = cache_root() / entry_key(files, max_side)
    store = open_entry(target)
    if store is None:
        store = _build_once(target, paths, max_side, max_bytes, workers, progress)
    if store is None:
        return sources
    slot = {p: k for k, p in enumerate(paths)}

    def attached(table):
        if table is None:
            return None
        slots = np.array([-1 if isinstance(i, np.ndarray) else slot[os.path.abspath(os.fspath(i))]
                          for i in table.items], dtype=np.int64)
        return dataclasses.replace(table, decoded=DecodedRows(store, slots))
    return dataclasses.replace(sources, train=attached(sources.train), test=attached(sources.test))


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError as e:  # vanished or unreadable since the scan
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e.strerror or e}") from e
    return [path, st.st_size, st.st_mtime_ns]


def entry_key(files: list, max_side: Optional[int]) -> str:
    """sha256 of everything the decoded pixels depend on: [path, size, mtime_ns] of each file, the size cap,
    the decoder (Pillow's version) and CACHE_FORMAT."""
    import PIL
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "pillow": PIL.__version__, "max_side": max_side},
                                  sort_keys=True).encode())
    for path, size, mtime in files:
        h.update(f"\n{path}\0{size}\0{mtime}".encode())
    return h.hexdigest()


def decoded_max_side(plan) -> int:
    """SIDE_FACTOR x the largest side a transform resizes an image to: the train input S, the eval resize R =
    tta.resize or S / crop_pct, R x the largest multiscale factor; over a kit.plan.RunPlan's members' data configs
    (what a run uses: nothing resolved again)."""
    pairs = [(m.data_config, m.recipe.tta) for m in plan.members]
    largest = 0.0
    for cfg, tta in pairs:
        side = tta.resize or round(cfg["input_size"] / cfg["crop_pct"])
        scale = max(tta.scales) if "multiscale" in tta.modes else 1.0
        largest = max(largest, cfg["input_size"], side * max(1.0, scale))
    return int(np.ceil(SIDE_FACTOR * largest))


# ---------------------------------------------------------------- building

def stored_shape(height: int, width: int, max_side: Optional[int]) -> tuple[int, int]:
    """(height, width) an image is stored at: as decoded, or its shorter side shrunk to max_side."""
    short = min(height, width)
    if max_side is None or short <= max_side:
        return height, width
    return max(1, round(height * max_side / short)), max(1, round(width * max_side / short))


def _decode(path: str, max_side: Optional[int]) -> np.ndarray:
    image = read_image(path)
    h, w = stored_shape(image.shape[0], image.shape[1], max_side)
    if (h, w) == image.shape[:2]:
        return image
    import cv2
    return np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))


def _header_sizes(paths: list[str], max_side: Optional[int]) -> list[int]:
    """Bytes each image takes once stored, from its header (EXIF rotation swaps the sides, not the size); 0
    for a file whose header cannot be read (read_image names it when it decodes it)."""
    from PIL import Image
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as img:
                h, w = stored_shape(img.height, img.width, max_side)
        except Exception:
            h = w = 0
        sizes.append(3 * h * w)
    return sizes


def _chunks(paths: list[str], sizes: list[int]) -> list[tuple[list[str], int]]:
    """Consecutive images in tasks of at most CHUNK images and CHUNK_BYTES (one image at least): (paths, bytes)."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start == CHUNK or total + size > CHUNK_BYTES):
            out.append((paths[start:i], total))
            start, total = i, 0
        total += size
    out.append((paths[start:], total))
    return out


def _build_once(target: Path, paths, max_side, max_bytes, workers, progress) -> Optional[DecodedStore]:
    """_build, by one process at a time: the members of a run started together (kit.executor) wait for the
    first to decode instead of each decoding the same images."""
    from filelock import FileLock
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target.parent / f".{target.name[:16]}.lock"))
        lock.acquire()
    except OSError:  # an unwritable cache dir: _build says so and skips
        return _build(target, paths, max_side, max_bytes, workers, progress)
    try:
        store = open_entry(target)  # finished by another process while this one waited
        return store if store is not None else _build(target, paths, max_side, max_bytes, workers, progress)
    finally:
        lock.release()


def _build(target: Path, paths: list[str], max_side, max_bytes, workers, progress) -> Optional[DecodedStore]:
    """Decode every image into a `.tmp-*` folder beside `target`, rename it into place and open it; None (with a
    warning) when the store does not fit or cannot be written."""
    root, t0 = target.parent, time.perf_counter()
    threads = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kit-decode")
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        blocks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
        sizes = [n for block in pool.map(_header_sizes, blocks, [max_side] * len(blocks)) for n in block]
        if not _fits(sum(sizes), len(paths), root, max_bytes):
            return None
        remove_stale_tmp(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name[:16]}-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared by the users of a machine
        index, size = _write_pixels(tmp / PIXELS, pool, 2 * threads, _chunks(paths, sizes), len(paths), max_side,
                                    progress)
        np.save(tmp / INDEX, index, allow_pickle=False)
        folder = os.path.commonpath([os.path.dirname(p) for p in (paths[0], paths[-1])])
        import PIL
        meta = {"format": CACHE_FORMAT, "n": len(paths), "bytes": size, "max_side": max_side, "folder": folder,
                "pillow": PIL.__version__, "seconds": round(time.perf_counter() - t0, 3)}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        (tmp / COMPLETE).write_text("")  # last: an entry without it is never read
        publish_dir(tmp, target, lambda t: open_entry(t) is not None)
    except ImageReadError:
        raise
    except OSError as e:  # a full, read-only or missing cache disk costs speed, not the run
        _warn(f"decoded-image cache skipped: cannot write it under {root} ({type(e).__name__}: {e}); images are "
              f"decoded from their files every epoch (slower)")
        return None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_entry(target)


def _fits(need: int, n: int, root: Path, max_bytes: Optional[int]) -> bool:
    room = shutil.disk_usage(root).free - DISK_RESERVE
    if need <= room and (max_bytes is None or need <= max_bytes):
        return True
    limit = f"max_bytes={max_bytes:,}" if max_bytes is not None and max_bytes < room else \
        f"the {max(room, 0) / 1e9:.1f} GB free in {root} (keeping {DISK_RESERVE / 1e9:.1f} GB)"
    _warn(f"decoded-image cache skipped: {n:,} images need {need / 1e9:.3g} GB, more than {limit}; images are "
          f"decoded from their files every epoch (slower); free space or set $KIT_CACHE_DIR to a larger disk")
    return False


def _decode_chunk(paths: list[str], max_side) -> list[np.ndarray]:
    return [_decode(p, max_side) for p in paths]


def _write_pixels(path: Path, pool, window: int, chunks, total: int, max_side, progress: Progress):
    """Decode `chunks` ((paths, bytes) each) in the pool and append their pixels to `path` in order: (index
    [N, 3], bytes written). At most `window` chunks and about WINDOW_BYTES are in flight: decoded images wait
    in memory only until they are written."""
    index = np.empty((total, 3), dtype=np.int64)
    report, close = progress_reporter(progress, total, "decoding images once")
    pending, todo = deque(), iter(chunks)
    offset = row = in_flight = 0
    try:
        with open(path, "wb") as f:
            while True:
                while len(pending) < window and (in_flight < WINDOW_BYTES or not pending):
                    chunk = next(todo, None)
                    if chunk is None:
                        break
                    pending.append((pool.submit(_decode_chunk, chunk[0], max_side), chunk[1]))
                    in_flight += chunk[1]
                if not pending:
                    break
                future, size = pending.popleft()
                for image in future.result():
                    f.write(image.data)
                    index[row] = (offset, image.shape[0], image.shape[1])
                    offset, row = offset + image.nbytes, row + 1
                in_flight -= size
                report(row)
            f.flush()
            os.fsync(f.fileno())
    finally:
        for future, _ in pending:
            future.cancel()
        close()
    return index, offset


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
