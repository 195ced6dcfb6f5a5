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

import json
import os
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import RunDirError
from kit.inference import build_member_model, load_bundle, load_run, read_weights, versions
from kit.inference._bundle import (BUNDLE_FILE, BUNDLE_FORMAT, MAX_MANIFEST_BYTES, WEIGHTS_FILE,  # noqa: F401
                                   read_safetensors)
from kit.plan import PLAN_FILE, plan_to_dict
from kit.rundir import sha256_file

README_FILE = "README.md"


def export_bundle(run_dir, out, *, as_zip: bool = False) -> Path:
    """Write the bundle of the finished run `run_dir` to `out` (a new folder; with as_zip a new .zip file holding
    that folder) and return its path. Every member's model is built from the run first, so a member whose files
    kit would refuse (a legacy pickled head, a checkpoint that is not tensors) stops the export, naming the fix."""
    ens = load_run(run_dir)  # unfinished members, or no blend yet: RunDirError with the command that fixes it
    out = Path(out)
    target = out.with_name(out.name + ".zip") if as_zip and out.suffix != ".zip" else out
    if target.exists():
        raise RunDirError(f"{target} exists; kit export writes a new bundle: pick another OUT, or remove it first")
    for c in ens.configs:
        for m in c.members:
            build_member_model(m, ens.task.n_outputs, ens.weights_files[m.name], "cpu")
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
    raw = plan_to_dict(ens.plan)
    exported = {m.name for c in ens.configs for m in c.members}
    raw["members"] = [m for m in raw["members"] if m["name"] in exported]
    for recipe in (raw["recipe"], *(m["recipe"] for m in raw["members"])):
        _without_databases(recipe)
    (folder / PLAN_FILE).write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    manifest = {
        "format": BUNDLE_FORMAT, "name": ens.recipe.name, "source_run": str(run_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "classes": list(ens.classes), "metric": ens.metric,
        "blend": {"method": ens.blend.method, "oof_score": ens.blend.oof_score,
                  "nested_score": ens.blend.nested_score, "params": ens.blend.params, "rule": ens.blend.rule},
        "configs": [{"name": c.name, "tta": c.tta, "weight": c.weight, "score": c.score,
                     "temperature": c.temperature, "members": [m.name for m in c.members]} for c in ens.configs],
        "left_out": list(ens.left_out)}
    (folder / README_FILE).write_text(readme(ens, manifest, folder.name))
    manifest["files"] = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                         for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / BUNDLE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def _without_databases(recipe: dict) -> None:
    """A bundle is made to be shared: the recipes in it name no database (the leaderboard's, a study's storage),
    with or without credentials; where its run recorded its results is none of its readers' business."""
    recipe["leaderboard"] = None
    recipe.setdefault("search", {})["storage"] = None


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
    from kit.leaderboard import markdown_text as md  # names are text: HTML and Markdown in them escaped
    v, metric = manifest["versions"], ens.metric
    blend = ens.blend.method or "none (one configuration)"
    lines = [f"# {md(ens.recipe.name)}: a kit bundle", "",
             f"Exported from {md(manifest['source_run'])} on {manifest['created']} with kit {v['kit']} "
             f"(torch {v['torch']}, timm {v['timm']}).", "",
             f"Task: {md(ens.task.describe())}; outputs ({len(ens.classes)}): {md(', '.join(ens.classes))}"
             + (f"; decision rule fitted out of fold: {ens.blend.rule['kind']}" if ens.blend.rule else ""), "",
             f"Blend: {blend}" + (f"; validation {metric} {ens.blend.nested_score:.4f} nested, "
                                  f"{ens.blend.oof_score:.4f} out-of-fold" if ens.blend.method else ""), "",
             f"| configuration | backbone | fold models | TTA | weight | validation {metric} |",
             "|---|---|---|---|---|---|"]
    for c in ens.configs:
        lines.append(f"| {md(c.name)} | {md(c.members[0].recipe.model.backbone)} | {len(c.members)} | {c.tta} | "
                     f"{c.weight:.3f} | {c.score:.4f} |")
    if ens.left_out:
        lines += ["", f"Left out (no weight in the blend): {md(', '.join(ens.left_out))}"]
    lines += ["", "## Predict", "", "```bash",
              f"kit predict {name} --images test/ --output submission.csv  # --sample CSV: ids and order checked",
              f"kit predict {name} --csv test.csv --image-dir test/ --members 1 --tta none   # on a time budget",
              "```", "", "```python", "import kit", f"ens = kit.load({name!r})",
              "probs = ens.predict(['a.jpg', 'b.jpg'])   # a DataFrame: a row per image, a column per class",
              "labels = ens.predict_labels('test/')", "```", "",
              f"Submission format: {ens.recipe.submit.format}. Loading checks every file against the sha256 in "
              f"{BUNDLE_FILE} and reads only JSON and safetensors: nothing here is unpickled.", ""]
    return "\n".join(lines)
