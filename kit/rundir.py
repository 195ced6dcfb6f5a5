"""Where each artifact of a run lives, and atomic writes (temp file, fsync, rename): a reader never sees
half a file, and a crash or a full disk (DiskFullError) leaves the previous version intact.

runs/<name>/
  recipe.yaml, recipe.hash        the resolved recipe and its hash (a run directory holds one recipe)
  folds.csv                       id, label, fold (-1: always in training for a holdout)
  members/<member>/               last.pt, best.pt, history.csv, done.json
  members/<member>/preds/         <split>_<tta>.npz  (split: oof | test)
  ensemble/                       report.json, oof_<method>.npz, test_<method>.npz
  submission.csv, summary.json

Writers of files a user names (write_new_file: never onto an existing file without force) and of files a command may
have nothing new for (write_if_changed) are here too; every file kit reads back is read by kit.readers.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat
import tempfile
from pathlib import Path

from kit.errors import DiskFullError, NotWritableError, RunDirError


def atomic_write(path, write) -> Path:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it into place.

    The file gets the mode open() would give it: an existing file's own mode, else 0o666 minus the umask
    (mkstemp alone makes it 0600, unreadable to teammates sharing the run directory). A full disk (ENOSPC,
    EDQUOT, or torch.save's "enforce fail at inline_container.cc" around one) raises DiskFullError; either way
    the temp file is removed and the previous file is intact."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e, path.parent)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise DiskFullError(f"no space left on device while writing {path}; nothing earlier was changed "
                                f"(the temporary file is removed{', the previous file is intact' * path.exists()})"
                                f"; free space on that disk (or set output_dir to another one) and run again") from e
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            err = NotWritableError(f"cannot write {path} ({e.strerror}); this command has something new to write "
                                   f"there: make {path.parent} writable, or work on a copy")
            err.errno = e.errno  # still an OSError of its kind, for callers that let a cache write fail
            raise err from e
        raise
    return path


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux shows the umask in /proc without changing it; os.umask can only be read by setting it, which
    # races with threads creating files meanwhile, so it is the fallback.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether `e` (or an error it arose from) is the disk or quota being full. torch.save turns the OSError of
    a failed write into RuntimeError("[enforce fail at inline_container.cc...] unexpected pos ..."), with the
    OSError as its context; where torch writes through C++ streams there is none, so the disk is asked."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and "inline_container.cc" in str(e) and _no_space(folder):
            return True
        e = e.__cause__ or e.__context__
    return False


def _no_space(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20  # under 1 MiB left for unprivileged writers


def atomic_save(obj, path) -> Path:
    import torch  # only the writers of checkpoints need torch
    return atomic_write(path, lambda f: torch.save(obj, f))


def write_bytes_atomic(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_if_changed(path, data: bytes | str) -> Path:
    """Write `data` atomically unless `path` already holds exactly that: a command with nothing new to say writes
    nothing, so it works on a run directory it may only read (a teammate's, a read-only mount)."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    except OSError:
        pass
    return write_bytes_atomic(path, data)


def write_json_if_changed(path, obj, ignore=()) -> Path:
    """write_json_atomic unless `path` holds the same JSON apart from the top-level keys in `ignore` (a wall time):
    what a command with nothing new would rewrite stays as it is."""
    path = Path(path)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            new = json.loads(json.dumps(obj, default=_jsonable))
            if isinstance(old, dict) and isinstance(new, dict) and _without(old, ignore) == _without(new, ignore):
                return path
        except (OSError, ValueError, RecursionError):
            pass
    return write_json_atomic(path, obj)


def _without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def write_new_file(path, data: bytes | str, *, force: bool = False, option: str = "--output",
                   protect=()) -> Path:
    """The one writer of a file a user names (an export, predictions, a submission, a recipe): check_new_file's
    refusals, then an atomic write."""
    check_new_file(path, force=force, option=option, protect=protect)
    return write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)


def check_new_file(path, *, force: bool = False, option: str = "--output", protect=()) -> Path:
    """RunDirError for a path write_new_file must not write: a folder, a missing parent folder (none is made:
    it is a typo more often than not), something that is not a plain file, an existing file unless `force`, and
    any of `protect` (the database a command reads) even with it."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{option} {path} is a folder; give a file path, e.g. {path / 'out.csv'}")
    if not path.parent.is_dir():
        raise RunDirError(f"{option} {path}: the folder {path.parent} does not exist; create it first, or pick "
                          f"another path")
    for p in protect:
        if p is not None and os.path.exists(p) and path.exists() and os.path.samefile(p, path):
            raise RunDirError(f"{option} {path} is {p}, which this command reads; it is never overwritten, even with "
                              f"--force: pick another path")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise RunDirError(f"{option} {path} exists and is not a plain file; pick another path")
        if not force:
            raise RunDirError(f"{option} {path} already exists and was not overwritten; pass --force to replace it, "
                              f"or pick another path")
    return path


def write_csv_atomic(path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def check_output_dir(output_dir) -> None:
    """output_dir can hold run folders: not a file, not inside /proc, /sys or /dev, and where it exists, a folder;
    a RunDirError saying so otherwise (before any work starts)."""
    p = Path(output_dir)
    real = Path(os.path.realpath(p))
    special = next((s for s in ("/proc", "/sys", "/dev") if real == Path(s) or Path(s) in real.parents), None)
    if special:
        raise RunDirError(f"output_dir {output_dir} is inside {special} (resolved {real}), which holds no run folders; "
                          f"set output_dir to a folder on a disk, e.g. runs")
    for q in (real, *real.parents):
        if q.exists():
            if not q.is_dir():
                raise RunDirError(f"output_dir {output_dir}: {q} is a file, not a folder; set output_dir to a folder "
                                  f"(e.g. runs), or move the file")
            return


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def sha256_file(path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks: the one checksum helper (bundles, the feature cache)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def member_dir(run_dir, member: str) -> Path:
    return Path(run_dir) / "members" / member


def round_dir(run_dir, round: int) -> Path:
    """Where pseudo-label round `round`'s blend is written when a later round learns from it (the last round's is
    ensemble/)."""
    return Path(run_dir) / "ensemble" / f"round{round}"


def pred_path(run_dir, member: str, split: str, tta: str) -> Path:
    return member_dir(run_dir, member) / "preds" / f"{split}_{tta}.npz"


STALE_TMP_S = 24 * 3600  # `.tmp-*` folders of a cache older than a day are leftovers of killed writers


def publish_dir(tmp: Path, target: Path, is_complete) -> None:
    """Rename a finished cache entry (a folder) into place. Another process may have finished the same entry
    first: keep theirs. A folder at `target` that is not complete (is_complete(path) false: an older layout, a
    half-copied folder) is replaced."""
    import shutil
    if target.exists() and not is_complete(target):
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_complete(target):
            raise


def remove_stale_tmp(root: Path, max_age_s: float = STALE_TMP_S) -> None:
    """Delete the `.tmp-*` folders under `root` older than max_age_s: writers that were killed."""
    import shutil
    import time
    now = time.time()
    for p in Path(root).glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
