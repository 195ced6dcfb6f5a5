"""The bundle format's reading half: a bundle made by `kit export` (kit.bundle writes it): bundle.json, then every file checked against its
size and sha256 before anything reads it, then JSON and safetensors only. A weights file swapped for a pickle is
refused (UnsafeFileError), naming it, and never opened by an unpickler.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from kit.errors import RunDirError, UnsafeFileError
from kit.plan import PLAN_FILE
from kit.readers import NUMBER as _NUMBER
from kit.rundir import sha256_file

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
# bundle.json is read whole: a stacker's coefficients are C x (M x C) floats, ~20 bytes each as JSON, so 64 MiB
# holds one over 1,000 classes and 3 configurations (3M floats), beyond any image competition's
MAX_MANIFEST_BYTES = 64 << 20


def open_bundle(path):
    """(folder, manifest, keep) of a bundle folder or .zip (extracted to a temporary folder, `keep`, that must live
    as long as its files are used; None for a folder). Every file is checked against bundle.json first
    (UnsafeFileError naming the one that fails)."""
    path, keep = Path(path), None
    if path.is_file():
        keep = tempfile.TemporaryDirectory(prefix="kit-bundle-")
        folder = _extract(path, Path(keep.name))
    else:
        folder = path
    manifest = _read_manifest(folder / BUNDLE_FILE)
    _verify(folder, manifest)
    return folder, manifest, keep


# what readers of bundle.json use, checked before anything reads a field
MANIFEST_SCHEMA = {"format": int, "classes": [str], "versions": dict, "left_out?": [str],
                   "blend": {"method": (str, type(None)), "oof_score?": (int, float, type(None)),
                             "nested_score?": (int, float, type(None)), "params?": (dict, type(None)),
                             "rule?": (dict, type(None))},
                   "configs": [{"name": str, "tta": str, "weight": _NUMBER, "score": _NUMBER,
                                "temperature?": (int, float, type(None)), "members": [str]}],
                   "files": {"*": {"sha256": str, "bytes": int}}}


def _read_manifest(path: Path) -> dict:
    from kit.recipe import TTA_MODES
    from kit.readers import check_schema, read_json
    if not path.is_file():
        raise RunDirError(f"{path.parent} is not a kit bundle (no {BUNDLE_FILE}); make one with kit export RUN OUT")
    fix = "export the run again"
    manifest = read_json(path, fix=fix, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise RunDirError(f"{path} is a bundle of format {got}, this kit reads format {BUNDLE_FORMAT}; export "
                          f"the run again with this kit")
    try:
        check_schema(manifest, MANIFEST_SCHEMA)
        bad = [c["tta"] for c in manifest["configs"] if c["tta"] not in TTA_MODES]
        if bad:
            raise ValueError(f"unknown TTA mode {bad[0]!r}")
    except ValueError as e:
        raise UnsafeFileError(f"{path} is not a bundle manifest this kit reads ({str(e)[:200]}); {fix}") from None
    return manifest


def _safe_name(rel: str, where) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafeFileError(f"{where} names the file {rel!r}, which is not a plain path inside the bundle; "
                              f"it was refused: export the run again")
    return rel


def _verify(folder: Path, manifest: dict) -> None:
    """Each listed file: a plain relative path, present, of its size and sha256; each weights file a
    safetensors file (its header is parsed, nothing else)."""
    from safetensors import safe_open
    files = manifest.get("files") or {}
    needed = {PLAN_FILE} | {f"members/{n}/{WEIGHTS_FILE}" for c in manifest.get("configs", []) for n in c["members"]}
    missing = sorted(needed - set(files))
    if missing:
        raise UnsafeFileError(f"{folder / BUNDLE_FILE} lists no checksum for {missing[:3]}; export the run again")
    fix = "it was not loaded; export the run again, or restore the file"
    for rel, info in files.items():
        p = folder / _safe_name(rel, folder / BUNDLE_FILE)
        if not p.is_file() or p.is_symlink():
            raise UnsafeFileError(f"{p} is missing from the bundle (or is not a plain file); {fix}")
        linked = next((q for q in p.parents if q != folder and folder in q.parents and q.is_symlink()), None)
        if linked is not None:  # a folder of the bundle leading elsewhere: its files are not the bundle's
            raise UnsafeFileError(f"{linked} is a symlink (to {linked.resolve()}), not a folder of the bundle; {fix}")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise UnsafeFileError(f"{p} is not the file that was exported (its size or sha256 differs from "
                                  f"{BUNDLE_FILE}); {fix}")
        if p.suffix == ".safetensors":
            try:
                with safe_open(str(p), framework="pt"):
                    pass
            except Exception as e:  # safetensors' own error type: whatever the header parse says, refuse
                raise UnsafeFileError(f"{p} is not a safetensors file ({type(e).__name__}: {str(e)[:160]}); "
                                      f"{fix}") from None


def read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # a corrupt or foreign file: refused, naming it
        raise UnsafeFileError(f"{path} is not a safetensors file ({type(e).__name__}: {str(e)[:160]}); it was "
                              f"not loaded: export the run again") from None


def _extract(zip_path: Path, dest: Path) -> Path:
    """The files bundle.json lists (and nothing else) copied out of the zip into `dest`, each name checked to be a
    plain path and each size to be the listed one before it is written."""
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsafeFileError(f"{zip_path} is not a zip file ({e}); pass a bundle folder or the .zip kit export "
                              f"wrote") from None
    with z:
        tops = [n for n in z.namelist() if n == BUNDLE_FILE or (n.count("/") == 1 and n.endswith("/" + BUNDLE_FILE))]
        if len(tops) != 1:
            raise RunDirError(f"{zip_path} holds {len(tops)} {BUNDLE_FILE} files at its top; a kit bundle holds one")
        prefix = tops[0][:-len(BUNDLE_FILE)]
        if z.getinfo(tops[0]).file_size > MAX_MANIFEST_BYTES:
            raise UnsafeFileError(f"{zip_path}: {tops[0]} is too large to be a bundle manifest; export the run again")
        (dest / BUNDLE_FILE).write_bytes(z.read(tops[0]))
        manifest = _read_manifest(dest / BUNDLE_FILE)
        for rel, info in (manifest.get("files") or {}).items():
            try:
                member = z.getinfo(prefix + _safe_name(rel, zip_path))
            except KeyError:
                raise UnsafeFileError(f"{zip_path} lacks {prefix + rel}, listed in its {BUNDLE_FILE}; "
                                      f"export the run again") from None
            if member.file_size != info["bytes"]:
                raise UnsafeFileError(f"{zip_path}: {member.filename} is {member.file_size:,} bytes, its "
                                      f"{BUNDLE_FILE} says {info['bytes']:,}; it was not extracted: export the run "
                                      f"again")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


