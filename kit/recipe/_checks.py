"""Checks of a recipe beyond one field's type that need nothing but the recipe: plain YAML values within bounds,
paths that exist, timm model names, albumentations class names, search spaces; and the helpers that name keys and
values in messages. What needs a built model (stages, a transform at the model's input size) is checked by the plan
(kit.plan.check_member_recipe), at the size the run will use.

Each check raises a RecipeError naming the recipe key, the file, the rule, the value and the fix.
"""
from __future__ import annotations

import difflib
import functools
import math
import os
from pathlib import Path

import yaml

from kit.errors import KitError, RecipeError
from kit.recipe._specs import BLEND_METHODS, TTA_MODES, AugmentSpec, ModelSpec, SearchParam, TrainSpec, TTASpec


# What a recipe's values may be, anywhere in it: YAML's plain types, bounded. Checked before anything copies or
# validates the values, so that an alias that contains itself or 10**30 in a transform's parameters fails here.
MAX_VALUES = 10_000  # values in one recipe (a recipe holds a few dozen; YAML aliases can repeat sections)
MAX_DEPTH = 32  # levels of nesting (search.params.<key>.choices[i] is 5)
MAX_TEXT = 4096  # characters in one string or key (PATH_MAX on Linux)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, message):
        super().__init__(message)
        self.problem = message  # what parse_override and read_yaml show


class UniqueKeySafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain YAML types only: no python/object tags, nothing constructed runs code) that refuses a
    key repeated in one mapping; defined once, at import."""


def _unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *alias`: its keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            repeated = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if not repeated:
            seen[key] = line
        else:
            first = seen[key]
            where = f"both on line {line}" if first == line else f"line {first} and line {line}"
            raise DuplicateKey(f"key {key!r} appears twice in one mapping ({where}); YAML would keep the last "
                               f"one silently: keep one")
    return loader.construct_mapping(node, deep=deep)


UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str):
    """yaml.safe_load, refusing a key repeated in one mapping (PyYAML keeps the last one silently): a
    yaml.YAMLError naming the key and its lines."""
    loader = UniqueKeySafeLoader(text)  # what yaml.safe_load does, with the safe loader above
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _key(loc) -> str:
    """('augment', 'train', 0, 'Affine') -> 'augment.train[0].Affine'."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else (f".{p}" if out else str(p))
    return out


def _short_key(loc) -> str:
    key = _key(loc)
    return key if len(key) <= 80 else key[:77] + "..."


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_plain(raw, source: str, prefix: tuple = ()) -> None:
    """Every value is None, bool, a 64-bit int, a finite float, a string or a list/mapping of them; keys are
    strings. Iterative: a deep or self-referencing structure is refused, not recursed into."""
    stack, seen = [(raw, prefix)], 0
    while stack:
        node, loc = stack.pop()
        seen += 1
        where = f"recipe key '{_short_key(loc)}' in {source}" if loc else source
        if seen > MAX_VALUES:
            raise RecipeError(f"{source} holds more than {MAX_VALUES:,} values (YAML aliases repeating a section?); "
                              f"a recipe states a few dozen keys")
        if len(loc) - len(prefix) > MAX_DEPTH:
            raise RecipeError(f"{where}: nested more than {MAX_DEPTH} levels deep (a YAML alias inside itself?)")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise RecipeError(f"{where}: key {_short(k)} is not a string (YAML reads unquoted numbers, "
                                      f"true/false, yes/no, on/off and null as values, not names); quote it or fix it")
                if len(k) > MAX_TEXT or "\0" in k:
                    raise RecipeError(f"{where}: key {_short(k)} " + ("holds a NUL byte" if "\0" in k else
                                      f"is {len(k):,} characters long (at most {MAX_TEXT:,})") + "; fix it")
                stack.append((v, loc + (k,)))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, loc + (i,)) for i, v in enumerate(node))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int) and not -2**63 <= node < 2**63:
            raise RecipeError(f"{where}: {_short(node)} does not fit in 64 bits; no recipe value needs more")
        elif isinstance(node, float) and not math.isfinite(node):
            raise RecipeError(f"{where}: {node} is not a number a run can use; write a finite value")
        elif isinstance(node, str) and (len(node) > MAX_TEXT or "\0" in node):
            raise RecipeError(f"{where}: {_short(node)} " + ("holds a NUL byte" if "\0" in node else
                              f"is {len(node):,} characters long (at most {MAX_TEXT:,})") + "; fix it")
        elif not isinstance(node, (str, int, float)):
            raise RecipeError(f"{where}: {_short(node)} (YAML read a {type(node).__name__}) is not a recipe value; "
                              f"quote it to make it a string")


def _unknown_key(loc: tuple, valid: list, source: str) -> str:
    section = _key(loc[:-1]) or "top level"
    hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    return (f"unknown key '{_key(loc)}' in {source}"
            + (f" (did you mean '{_key(loc[:-1] + (hint[0],))}'?)" if hint else "")
            + f"; keys under '{section}': {', '.join(valid)}")


def _is_dir(path) -> bool:
    try:
        return Path(path).is_dir()
    except OSError:  # a name too long for the file system, a folder without permission: not usable either
        return False


def _is_file(path) -> bool:
    try:
        return Path(path).is_file()
    except OSError:
        return False


def _check_semantics(r, source: str) -> None:
    def fail(key, msg):
        raise RecipeError(f"recipe key '{key}' in {source}: {msg}")

    if r.data.source in ("imagefolder", "kaggle"):
        if not r.data.root:
            fail("data.root", f"data.source={r.data.source} needs data.root, the dataset folder")
        if not _is_dir(r.data.root):
            fail("data.root", f"folder {r.data.root} does not exist (resolved to {os.path.abspath(r.data.root)}); "
                              f"fix the path")
        csv = Path(r.data.root) / r.data.train_csv
        if r.data.source == "kaggle" and not r.data.label_pattern and not _is_file(csv):
            fail("data.train_csv", f"{csv} does not exist; set data.train_csv to the labels CSV (or "
                                   f"data.label_pattern when the labels are in the file names)")
        if r.data.label_pattern and r.data.source != "kaggle":
            fail("data.label_pattern", f"labels in file names are read by data.source: kaggle (a folder of images "
                                       f"and a sample submission); data.source is {r.data.source}")
    if r.data.source in ("imagefolder", "kaggle"):
        for key in ("train_csv", "image_dir", "test_dir", "sample_submission"):
            _check_inside_root(r.data, key, fail)
    if r.data.refit and r.data.split == "kfold":
        fail("data.refit", f"refit retrains each member validated on a holdout on every labelled image; with split: "
                           f"kfold the fold models already cover every image and predict the test images together, "
                           f"so refit would be ignored: remove data.refit, or set data.split: holdout")
    if r.model.weights not in ("auto", "hub", "offline", "none"):
        if not _is_file(r.model.weights):
            fail("model.weights", f"file {r.model.weights} does not exist; use auto, hub, offline, none or a weights "
                                  f"file")
        try:
            st = os.stat(r.model.weights)
            _tensor_file_checked(os.path.realpath(r.model.weights), st.st_size, st.st_mtime_ns)
        except KitError as e:
            fail("model.weights", str(e))
    from kit.rundir import check_output_dir
    try:
        check_output_dir(r.output_dir)
    except KitError as e:
        fail("output_dir", str(e))
    if r.model.strategy == "cut_at" and r.model.cut_at is None:
        fail("model.cut_at", "strategy cut_at needs model.cut_at, the index of the last stage kept (e.g. 2)")
    if r.train.accum_steps > 1 and r.train.batch_size < 2:
        fail("train.batch_size", "gradient accumulation needs batch_size >= 2")
    if r.tta.mode not in ("auto",) + TTA_MODES:
        fail("tta.mode", f"{r.tta.mode!r} is not a TTA mode; valid: auto, {', '.join(TTA_MODES)}")
    if r.tta.mode != "auto" and r.tta.mode not in r.tta.modes:
        fail("tta.mode", f"{r.tta.mode!r} must be one of tta.modes {r.tta.modes} (it is chosen among those computed)")
    if r.ensemble.choose not in ("auto",) + BLEND_METHODS:
        fail("ensemble.choose", f"valid: auto, {', '.join(BLEND_METHODS)}")
    if r.ensemble.choose != "auto" and r.ensemble.choose not in r.ensemble.methods:
        fail("ensemble.choose", f"{r.ensemble.choose!r} is not among ensemble.methods {list(r.ensemble.methods)}, "
                                f"so it would never be computed; add it to ensemble.methods or choose one of those")
    _check_backbone(r.model.backbone, "model.backbone", source)
    for i, over in enumerate(r.ensemble.backbones):
        _check_backbone_keys(i, over, source)
    for key, p in r.search.params.items():
        _check_search_param(r, key, p, source)
    for i, item in enumerate(r.augment.train):
        check_transform_name(i, item, source)


@functools.lru_cache(maxsize=64)
def _tensor_file_checked(real: str, size: int, mtime_ns: int) -> None:
    """kit.readers.check_tensor_file once per file version: every recipe made from this one (members, seeds,
    trials, backbones; each through recipe_from_dict) names the same weights file. A refusal is not cached."""
    from kit.readers import check_tensor_file
    check_tensor_file(real, fix="give a .pth/.pt file saved by torch.save or a .safetensors file")


def _check_inside_root(data, key: str, fail) -> None:
    """data.<key> (a file or folder named relative to data.root) stays inside data.root, after symlinks: kit reads
    a dataset only inside its root, as it reads each image only inside its folder (kit.data.sources)."""
    value = getattr(data, key)
    if value is None:
        return
    root = os.path.realpath(data.root)
    real = os.path.realpath(os.path.join(data.root, value))
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        fail(f"data.{key}", f"{value!r} leads outside data.root ({data.root}, resolved {root}) to {real}, and kit "
                            f"reads a dataset only inside its root; name a {_what(key)} under data.root (relative, without '..' or a symlink out of it), or set data.root to a "
                            f"folder that holds it")


def _what(key: str) -> str:
    return "file" if key in ("train_csv", "sample_submission") else "folder"


# Keys one backbone entry may not vary: the run reads them once, for every member
RUN_WIDE_KEYS = {
    ("train", "seed"): "each member's seed comes from ensemble.seeds (or the top-level train.seed), the same for "
                       "every backbone, so that configurations pair up by seed",
    ("train", "metric"): "one metric scores, chooses and blends the whole run; set the top-level train.metric",
    ("train", "device"): "the run trains on one device; set the top-level train.device",
}


def check_transform_name(i: int, item: dict, source: str) -> None:
    """augment.train[i] names an albumentations transform class (its parameters are checked by the plan, which
    builds it at the model's input size: kit.data.transforms.check_augment)."""
    import albumentations as A
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(f"recipe key 'augment.train[{i}]' in {source}: each entry is one mapping "
                          f"{{TransformName: {{param: value}}}}, got {_short(item)}")
    (name, _), = item.items()
    if not usable_transform(A, name):
        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper() and usable_transform(A, n)],
                                          n=3)
        raise RecipeError(f"recipe key 'augment.train[{i}].{name}' in {source}: not an albumentations transform"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))


def usable_transform(A, name: str) -> bool:
    """A transform class, not one of albumentations' base classes (they build, then cannot run)."""
    c = getattr(A, name, None)
    return (isinstance(c, type) and issubclass(c, A.BasicTransform)
            and (name == "NoOp" or not c.__module__.endswith("transforms_interface")))


def _check_backbone_keys(i: int, over: dict, source: str) -> None:
    """ensemble.backbones[i] is {section: {key: value}} over the sections a backbone may vary."""
    sections = {"model": ModelSpec, "train": TrainSpec, "augment": AugmentSpec, "tta": TTASpec}
    where = f"ensemble.backbones[{i}]"
    bad = sorted(set(over) - set(sections))
    if bad:
        raise RecipeError(f"recipe key '{where}' in {source}: sections {bad} cannot vary per backbone; "
                          f"use {', '.join(sections)}")
    for section, values in over.items():
        for k in values:
            if k not in sections[section].model_fields:
                raise RecipeError(_unknown_key(("ensemble", "backbones", i, section, k),
                                               list(sections[section].model_fields), source))
            if (section, k) in RUN_WIDE_KEYS:
                raise RecipeError(f"recipe key '{where}.{section}.{k}' in {source}: {RUN_WIDE_KEYS[section, k]}; "
                                  f"remove it from the backbone entry")


def _check_backbone(name: str, key: str, source: str) -> None:
    import timm
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise RecipeError(f"recipe key '{key}' in {source}: {name!r} is not a timm model"
                          + (f"; did you mean {', '.join(close)}?" if close else ".")
                          + " List them with python -c \"import timm; print(timm.list_models('*pattern*'))\"")


def _check_search_param(r: Recipe, key: str, p: SearchParam, source: str) -> None:
    where = f"search.params.{key}"
    node = r.to_dict()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RecipeError(f"recipe key '{where}' in {source}: {key!r} is not a recipe key; "
                              f"search over existing keys such as train.lr, model.frozen_stages")
        node = node[part]
    if p.type in ("float", "int"):
        if p.low is None or p.high is None:
            raise RecipeError(f"recipe key '{where}' in {source}: type {p.type} needs low and high")
        if not p.low <= p.high:
            raise RecipeError(f"recipe key '{where}' in {source}: low <= high must hold, "
                              f"but got (low={p.low}, high={p.high})")
        if p.log and p.low <= 0:
            raise RecipeError(f"recipe key '{where}' in {source}: log scale needs low > 0, got low={p.low}")
    elif not p.choices:
        raise RecipeError(f"recipe key '{where}' in {source}: categorical needs a non-empty list of choices")
