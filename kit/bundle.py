"""`kit export RUN OUT`: a finished run as one self-contained folder (or .zip) holding what inference needs and
nothing else; kit.load reads it back without the run directory, the training data or any pickle.

    OUT/
      bundle.json                          format, versions (kit, torch, timm), classes, submission format, the
                                           blend (method, weights, temperatures, stacker), each configuration's
                                           TTA mode, fold models and validation score, the sha256 and size of
                                           every other file
      plan.json                            the run's plan (kit.plan) for the exported members: resolved recipes,
                                           data configs, pretrained_cfg overlays, channels_last
      members/<member>/model.safetensors   (+ the head file of a feature-extraction member, kit.features)
      README.md                            classes, members, validation scores, how to predict

Configurations the chosen blend gives no weight (kit.inference.WEIGHT_EPS) are left out. Loading checks every
file's size and sha256 against bundle.json before anything reads it, then reads JSON and safetensors only: a
weights file swapped for a pickle is refused (UnsafeFileError), naming it, and never opened by an unpickler.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import RunDirError, UnsafeFileError
from kit.plan import PLAN_FILE

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
# bundle.json is read whole: a stacker's coefficients are C x (M x C) floats, ~20 bytes each as JSON, so 64 MiB
# holds one over 1,000 classes and 3 configurations (3M floats), beyond any image competition's
MAX_MANIFEST_BYTES = 64 << 20


def export_bundle(run_dir, out, *, as_zip: bool = False) -> Path:
    """Write the bundle of the finished run `run_dir` to `out` (a new folder; with as_zip a new .zip file holding
    that folder) and return its path. Every member's model is built from the run first, so a member whose files
    kit would refuse (a legacy pickled head, a checkpoint that is not tensors) stops the export, naming the fix."""
    from kit.inference import build_member_model, load_run
    ens = load_run(run_dir)  # unfinished members, or no blend yet: RunDirError with the command that fixes it
    out = Path(out)
    target = out.with_name(out.name + ".zip") if as_zip and out.suffix != ".zip" else out
    if target.exists():
        raise RunDirError(f"{target} exists; kit export writes a new bundle: pick another OUT, or remove it first")
    for c in ens.configs:
        for m in c.members:
            build_member_model(m, len(ens.classes), ens.weights_files[m.name], "cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        folder = Path(tmp) / (target.stem if as_zip else target.name)
        _write_bundle(ens, Path(run_dir), folder)
        load_bundle(folder)  # every file checks out as a reader will check it
        if as_zip:
            from kit.rundir import atomic_write
            atomic_write(target, lambda f: _zip(folder, f))
        else:
            os.rename(folder, target)
    return target


def _write_bundle(ens, run_dir: Path, folder: Path) -> None:
    from safetensors.torch import save
    from kit.features import HEAD_FILE
    from kit.inference import read_json, read_weights, versions
    from kit.rundir import write_bytes_atomic
    for c in ens.configs:
        for m in c.members:
            d = folder / "members" / m.name
            d.mkdir(parents=True)
            # clones: safetensors refuses tensors sharing storage, which a state dict may hold (tied weights)
            saved = read_weights(ens.weights_files[m.name])
            state = {k: v.detach().cpu().clone().contiguous() for k, v in saved.items()}
            write_bytes_atomic(d / WEIGHTS_FILE, save(state, metadata={"kit_member": m.name}))  # mode as open()'s
            head = ens.weights_files[m.name].parent / HEAD_FILE
            if head.is_file():
                shutil.copyfile(head, d / HEAD_FILE)
    raw = read_json(run_dir / PLAN_FILE, f"plan it again with: kit submit {run_dir}")
    exported = {m.name for c in ens.configs for m in c.members}
    raw["members"] = [m for m in raw["members"] if m["name"] in exported]
    (folder / PLAN_FILE).write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    manifest = {
        "format": BUNDLE_FORMAT, "name": ens.recipe.name, "source_run": str(run_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "classes": list(ens.classes), "metric": ens.metric,
        "blend": {"method": ens.blend.method, "oof_score": ens.blend.oof_score,
                  "nested_score": ens.blend.nested_score, "params": ens.blend.params},
        "configs": [{"name": c.name, "tta": c.tta, "weight": c.weight, "score": c.score,
                     "temperature": c.temperature, "members": [m.name for m in c.members]} for c in ens.configs],
        "left_out": list(ens.left_out)}
    (folder / README_FILE).write_text(readme(ens, manifest, folder.name))
    manifest["files"] = {p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                         for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / BUNDLE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def _zip(folder: Path, f) -> None:
    with zipfile.ZipFile(f, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():  # weights barely compress (float32 mantissas): stored; JSON and text deflated
                kind = zipfile.ZIP_STORED if p.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                z.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}", compress_type=kind)


def bundle_size(path) -> int:
    """Bytes on disk: the zip file, or every file of the folder."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def readme(ens, manifest: dict, name: str) -> str:
    v, metric = manifest["versions"], ens.metric
    blend = ens.blend.method or "none (one configuration)"
    lines = [f"# {ens.recipe.name}: a kit bundle", "",
             f"Exported from `{manifest['source_run']}` on {manifest['created']} with kit {v['kit']} "
             f"(torch {v['torch']}, timm {v['timm']}).", "",
             f"Classes ({len(ens.classes)}): {', '.join(ens.classes)}", "",
             f"Blend: {blend}" + (f"; validation {metric} {ens.blend.nested_score:.4f} nested, "
                                  f"{ens.blend.oof_score:.4f} out-of-fold" if ens.blend.method else ""), "",
             f"| configuration | backbone | fold models | TTA | weight | validation {metric} |",
             "|---|---|---|---|---|---|"]
    for c in ens.configs:
        lines.append(f"| {c.name} | {c.members[0].recipe.model.backbone} | {len(c.members)} | {c.tta} | "
                     f"{c.weight:.3f} | {c.score:.4f} |")
    if ens.left_out:
        lines += ["", f"Left out (no weight in the blend): {', '.join(ens.left_out)}"]
    lines += ["", "## Predict", "", "```bash",
              f"kit predict {name} --images test/ --output submission.csv  # --sample CSV: ids and order checked",
              f"kit predict {name} --csv test.csv --image-dir test/ --members 1 --tta none   # on a time budget",
              "```", "", "```python", "import kit", f"ens = kit.load({name!r})",
              "probs = ens.predict(['a.jpg', 'b.jpg'])   # a DataFrame: a row per image, a column per class",
              "labels = ens.predict_labels('test/')", "```", "",
              f"Submission format: {ens.recipe.submit.format}. Loading checks every file against the sha256 in "
              f"{BUNDLE_FILE} and reads only JSON and safetensors: nothing here is unpickled.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- reading a bundle

def load_bundle(path):
    """The kit.inference.Ensemble of a bundle folder or .zip (extracted to a temporary folder that lives as long
    as the Ensemble). Every file is checked against bundle.json first (UnsafeFileError naming the one that fails)."""
    from kit.inference import Blend, Config, Ensemble, member_plans, plan_recipe
    path, keep = Path(path), None
    if path.is_file():
        keep = tempfile.TemporaryDirectory(prefix="kit-bundle-")
        folder = _extract(path, Path(keep.name))
    else:
        folder = path
    manifest = _read_manifest(folder / BUNDLE_FILE)
    _verify(folder, manifest)
    raw = json.loads((folder / PLAN_FILE).read_text())
    members = {m.name: m for m in member_plans(raw, folder / PLAN_FILE)}
    try:
        configs = [Config(c["name"], c["tta"], float(c["weight"]), c["score"],
                          tuple(members[n] for n in c["members"]), c.get("temperature")) for c in manifest["configs"]]
        blend = Blend(**manifest["blend"])
        files = {n: folder / "members" / n / WEIGHTS_FILE for c in configs for n in (m.name for m in c.members)}
        recipe = plan_recipe(raw, folder / PLAN_FILE)
        return Ensemble(path, "bundle", recipe, manifest["classes"], configs, blend, files, manifest["versions"],
                        raw.get("environment", {}), manifest.get("left_out", ()), keep)
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{folder / BUNDLE_FILE} is not a bundle this kit reads ({type(e).__name__}: "
                          f"{str(e)[:200]}); export the run again with this kit") from None


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise RunDirError(f"{path.parent} is not a kit bundle (no {BUNDLE_FILE}); make one with kit export RUN OUT")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UnsafeFileError(f"{path} is {path.stat().st_size:,} bytes, not a bundle manifest; export the run again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnsafeFileError(f"{path} is not JSON ({e}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise RunDirError(f"{path} is a bundle of format {got}, this kit reads format {BUNDLE_FORMAT}; export "
                          f"the run again with this kit")
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
        if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
