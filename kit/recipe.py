"""A recipe: the YAML file that drives a whole run, loaded into typed, frozen specs.

Defaults live here and only here; a recipe file states what differs. Unknown keys, wrong types and
missing paths fail in `load_recipe`, before any work starts, with the file, the key and the fix.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


from kit.errors import RecipeError  # noqa: E402  (re-exported: kit.recipe.RecipeError)


class Spec(BaseModel):
    # NaN and inf are refused: `lr: .inf` passes gt=0, and a float without bounds takes NaN too. (Read from YAML,
    # _check_plain below refuses them first, anywhere in a recipe, naming the key.)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# scikit-learn's random_state and numpy's legacy seeding take 0 .. 2**32 - 1; torch takes more, so this bound fits all.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
MAX_SIDE = 4096  # px: one 3 x 4096 x 4096 float32 image is 201 MB, a batch of 32 is 6.4 GB
MAX_DIGITS_SIDE = 512  # px: 1,797 digits held as S x S x 3 uint8 arrays: 1797 * 3 * 512^2 B = 1.4 GB
N_DIGITS = 1797  # images in scikit-learn's bundled digits
DEVICES = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,4})?")


def _image_side(v: Optional[int], what: str) -> Optional[int]:
    """`v` px, or a ValueError with the memory it would take when it is over MAX_SIDE."""
    if v is not None and v > MAX_SIDE:
        one = 3 * v * v * 4
        raise ValueError(f"{v} px is over the {MAX_SIDE} px bound: {what} is a 3 x {v} x {v} float32 tensor, "
                         f"3 * {v}^2 * 4 B = {one / 1e9:,.1f} GB ({32 * one / 1e9:,.1f} GB for a batch of 32); "
                         f"use at most {MAX_SIDE} (201 MB an image), e.g. 224, 384 or 512")
    return v


class DataSpec(Spec):
    source: Literal["digits", "imagefolder", "kaggle"] = "digits"
    root: Optional[str] = None  # folder of an imagefolder / kaggle dataset, relative to the current directory
    # Kaggle-style folder: root/train.csv (id or path column + label column), root/<image_dir>/, root/<test_dir>/
    train_csv: str = "train.csv"
    id_column: str = "id"
    label_column: str = "label"
    path_column: Optional[str] = None  # a column with image paths (relative to image_dir); default: id + image_suffix
    image_dir: str = "train"
    image_suffix: str = ""  # appended to ids to name files, e.g. ".jpg"
    test_dir: Optional[str] = "test"  # imagefolder and kaggle: unlabelled test images (optional)
    sample_submission: Optional[str] = "sample_submission.csv"  # kaggle: fixes test ids, their order and columns
    # Digits (scikit-learn's bundled 8x8 digits), the quickstart's built-in competition.
    digits_size: int = Field(32, ge=8)  # pixels each digit is upscaled to (before the backbone's resize), <= 512
    digits_test_fraction: float = Field(0.2, gt=0, lt=1)  # held back as the unlabelled "test" set
    # Split of the labelled images into training and validation.
    split: Literal["holdout", "kfold"] = "holdout"
    folds: int = Field(5, ge=2)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    seed: Seed = 0  # seed of the split; members' own seeds are in train.seed / ensemble.seeds
    # DataLoader worker processes preparing batches beside training; auto: measured once, in the plan (on 2 cores
    # reading decoded images in the main process can be fastest). Workers never change the numbers (each sample's
    # augmentation is seeded from the member's seed, the epoch and its row).
    num_workers: Union[Literal["auto"], Annotated[int, Field(ge=0, le=256)]] = "auto"
    limit: Optional[int] = Field(None, ge=2)  # use only the first N labelled images (smoke tests)
    # Images that cannot be decoded (found by a scan of every image before training): fail lists them all and
    # stops; skip trains without them and lists them in the run directory (bad_images.csv) and the summary.
    bad_images: Literal["fail", "skip"] = "fail"

    @field_validator("digits_size")
    @classmethod
    def _digits_fit_in_memory(cls, v):
        if v > MAX_DIGITS_SIDE:
            raise ValueError(f"{v} px is over the {MAX_DIGITS_SIDE} px bound: the {N_DIGITS:,} digits are held in "
                             f"memory as S x S x 3 uint8 arrays, {N_DIGITS} * 3 * {v}^2 B = "
                             f"{N_DIGITS * 3 * v * v / 1e9:,.1f} GB; use at most {MAX_DIGITS_SIDE} (1.4 GB), e.g. 32: "
                             f"the backbone's resize (augment.input_size) does the rest")
        return v


class AugmentSpec(Spec):
    # albumentations transforms by class name, applied to training images before resize/normalise.
    # RandomResizedCrop gets its size from the backbone unless given. Default: crop + horizontal flip.
    train: list[dict[str, dict]] = Field(
        default_factory=lambda: [{"RandomResizedCrop": {"scale": [0.6, 1.0]}}, {"HorizontalFlip": {"p": 0.5}}])
    input_size: Optional[int] = Field(None, ge=8)  # default: the backbone's pretrained config
    crop_pct: Optional[float] = Field(None, gt=0, le=1)  # eval resize = input_size / crop_pct, then centre crop

    @field_validator("train", mode="before")
    @classmethod
    def _no_params_is_empty_params(cls, v):
        # `- HorizontalFlip:` (no parameters) reads as {HorizontalFlip: None} in YAML
        if not isinstance(v, list):
            return v
        return [{k: {} if p is None else p for k, p in item.items()} if isinstance(item, dict) else item for item in v]

    @field_validator("train")
    @classmethod
    def _one_transform_per_item(cls, v):
        for i, item in enumerate(v):
            if len(item) != 1:
                raise ValueError(f"item {i} must be one 'TransformName: {{params}}' mapping, got {sorted(item)}")
        return v

    @field_validator("input_size")
    @classmethod
    def _bounded_input(cls, v):
        return _image_side(v, "each input image")


class ModelSpec(Spec):
    backbone: str = "efficientnet_lite0"  # any timm model name
    weights: str = "auto"  # auto | hub | offline | none | path/to/file.(pth|safetensors)
    strategy: Literal["feature_extract", "finetune", "gradual", "full", "cut_at", "auto"] = "finetune"
    frozen_stages: int = Field(0, ge=0)  # finetune: early stages (timm feature_info) kept frozen
    backbone_lr_scale: float = Field(0.1, gt=0, le=1)  # finetune/gradual/cut_at: backbone lr = lr * this
    unfreeze_every: int = Field(1, ge=1)  # gradual: one more stage (from the top) every N epochs
    layer_decay: Optional[float] = Field(None, gt=0, le=1)  # full: layer-wise lr decay (timm optim factory)
    cut_at: Optional[int] = Field(None, ge=0)  # cut_at: last stage kept (index into feature_info)
    head: Literal["linear", "mlp", "logreg", "svm"] = "linear"
    head_hidden: int = Field(512, ge=1, le=65536)  # mlp head width (1280 x 65536 = 84M weights at most)
    head_c: float = Field(1.0, gt=0)  # logreg / svm inverse regularisation strength
    head_views: int = Field(1, ge=1, le=64)  # feature_extract: cached views per training image (1 = no flips)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    channels_last: Optional[bool] = None  # None: on (measured faster for convnets on CPU and CUDA)


class TrainSpec(Spec):
    # Upper bounds here only catch typos and overflows (10**12 epochs), not taste.
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)  # the head's lr; the backbone's is scaled by model.backbone_lr_scale
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0)  # mixup alpha (0: off)
    cutmix: float = Field(0.0, ge=0)  # cutmix alpha (0: off)
    ema: bool = False
    ema_decay: float = Field(0.998, gt=0, lt=1)
    accum_steps: int = Field(1, ge=1, le=4096)
    grad_clip: Optional[float] = Field(None, gt=0)
    early_stopping: Optional[int] = Field(None, ge=1)  # patience in epochs on the validation metric
    metric: Literal["accuracy", "log_loss", "f1_macro"] = "accuracy"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA when supported, off on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: Seed = 0

    @field_validator("device")
    @classmethod
    def _known_device(cls, v):
        if not DEVICES.fullmatch(v):
            raise ValueError(f"{v!r} is not a device; valid: auto, cpu, cuda, cuda:N (N: the GPU's index, "
                             f"e.g. cuda:0), mps")
        return v


def _check_known(values: list, valid: tuple, what: str) -> list:
    bad = [x for x in values if x not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return values


TTA_MERGES = ("mean", "gmean", "tsharpen")
TTA_DEFAULT_SCALES = (0.875, 1.0, 1.125)  # multiscale: factors of the input size
TTA_MODES = ("none", "hflip", "vflip", "flip", "d4", "five_crop", "ten_crop", "ten_crop_vflip", "multiscale")


class TTASpec(Spec):
    modes: list[str] = Field(default_factory=lambda: ["none"])  # every mode computed for every member
    mode: str = "auto"  # the one ensembles use; auto: best validation score among `modes`
    merge: Literal[TTA_MERGES] = "mean"
    resize: Optional[int] = Field(None, ge=8)  # crop modes: resize to this, then crop; default input/crop_pct
    # multiscale factors of the input size: 0.25 keeps an 8 px input 2 px wide, 4 makes 4096 px 16384 px
    scales: list[Annotated[float, Field(ge=0.25, le=4)]] = Field(default_factory=lambda: list(TTA_DEFAULT_SCALES))
    original_weight: Optional[float] = Field(None, ge=0, le=1)  # weight of the un-augmented view
    max_batch_views: int = Field(256, ge=1, le=65_536)  # images x views in one forward pass (memory budget)

    @field_validator("resize")
    @classmethod
    def _bounded_resize(cls, v):
        return _image_side(v, "each image TTA cuts its views from")

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v):
        _check_known(v, TTA_MODES, "TTA modes")
        if not v:
            raise ValueError("at least one mode is needed, e.g. [none]")
        return v


# Blending methods compared by kit.ensemble.evaluate_methods, simplest first ("best": the best single member,
# chosen on the fitting folds like any fitted blend, so that "no blend" is always a candidate; "stack": a
# logistic regression on the members' out-of-fold log-probabilities, fitted and scored with nested folds).
BLEND_METHODS = ("best", "mean", "gmean", "rank", "weights", "greedy", "stack")


class EnsembleSpec(Spec):
    seeds: Optional[list[Seed]] = None  # member seeds; default: [train.seed]
    # Each backbone is a set of overrides of the recipe, e.g. {model: {backbone: resnet18}, train: {lr: 3e-4}}.
    backbones: list[dict[str, dict]] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=lambda: list(BLEND_METHODS))
    choose: str = "auto"  # auto: best nested out-of-fold score
    temperature: bool = False  # temperature-scale each member on its out-of-fold predictions first

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        # members are named and stored by seed: a repeated seed would be one member counted twice
        if v is None:
            return v
        if not v:
            raise ValueError("at least one seed is needed, e.g. [0]")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be distinct; {dup} repeat{'s' * (len(dup) == 1)}")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v):
        return _check_known(v, BLEND_METHODS, "blending methods")


class SubmitSpec(Spec):
    format: Literal["label", "proba"] = "label"
    path: str = "submission.csv"  # relative to the run directory


class PseudoSpec(Spec):
    # Pseudo-labelling: after the first round of members, the blend's confident test predictions join the
    # training rows of a new round (same grid, members named ...-r1). The member of fold k learns only from the
    # fold-k members of the round before (kit.pseudo: no test label comes from a model that trained on fold k).
    rounds: int = Field(0, ge=0, le=5)  # rounds after the first (0: off)
    threshold: Optional[float] = Field(0.9, gt=0, le=1)  # keep test images whose blended top probability >= this
    top_fraction: Optional[float] = Field(None, gt=0, le=1)  # instead: the most confident fraction of each class
    soft: bool = True  # targets: the blend's probabilities (soft) or its argmax (hard)
    temperature: float = Field(1.0, gt=0, le=20)  # soft targets p^(1/T), renormalised


class DistillSpec(Spec):
    # Distillation (`kit distill RUN --into BACKBONE` writes such a recipe): each member learns from the finished
    # run `teacher`'s blend, per fold as pseudo-labels do: its training images' targets mix the one-hot label
    # (weight alpha) with the teacher's softened probabilities; with test_images, the test images join too.
    teacher: Optional[str] = None  # run directory of the teacher (a finished run with the same data and folds)
    temperature: float = Field(2.0, gt=0, le=20)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the hard label in a labelled image's target
    test_images: bool = True  # also train on the test images with the teacher's soft blend


class SearchParam(Spec):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = Field(None, gt=0)
    choices: Optional[list[Any]] = None


class SearchSpec(Spec):
    params: dict[str, SearchParam] = Field(default_factory=dict)  # recipe key path -> distribution
    trials: int = Field(20, ge=1, le=100_000)
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    fold: int = Field(0, ge=0)  # each trial trains this fold (or the holdout)
    seed: Seed = 0
    storage: Optional[str] = None  # SQLAlchemy URL; default: sqlite file in the run directory
    study_name: Optional[str] = None  # default: the recipe name
    top_k: int = Field(3, ge=1, le=1000)  # best trials kept as ensemble members


class Recipe(Spec):
    name: str = "recipe"
    output_dir: str = "runs"  # runs land in output_dir/name
    leaderboard: Optional[str] = None  # SQLAlchemy URL; default leaderboard/leaderboard.sqlite
    data: DataSpec = DataSpec()
    augment: AugmentSpec = AugmentSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    tta: TTASpec = TTASpec()
    ensemble: EnsembleSpec = EnsembleSpec()
    submit: SubmitSpec = SubmitSpec()
    search: SearchSpec = SearchSpec()
    pseudo: PseudoSpec = PseudoSpec()
    distill: DistillSpec = DistillSpec()

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v):
        # the run lands in output_dir/name: a name with a separator or '..' would write somewhere else
        if not v or v in (".", "..") or "/" in v or "\\" in v or v != v.strip() or "\0" in v:
            raise ValueError(f"a run name is one folder name (letters, digits, '-', '_', '.'), got {v!r}; "
                             f"put the folder in output_dir instead")
        return v

    @property
    def seeds(self) -> list[int]:
        return list(self.ensemble.seeds or [self.train.seed])

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides, source: str = "<overrides>") -> "Recipe":
        """A new, validated recipe with dotted keys set: {"train.lr": 3e-4} or [("train.lr", 3e-4)] or
        ["train.lr=3e-4"]. The one place where recipes are changed after loading (backbones, seeds, trials,
        advice, best.yaml all go through it)."""
        raw = apply_overrides(self.to_dict(), overrides, source=source)
        return recipe_from_dict(raw, source=source)


# Keys that change where or how fast a run goes, not what it computes: left out of the hash.
UNHASHED_KEYS = (("output_dir",), ("leaderboard",), ("data", "num_workers"), ("search",))
# Keys that tell seeds of one configuration apart: the leaderboard groups entries that differ only in these (and in
# the unhashed keys, and the device) as one configuration, reported as mean +- std.
SEED_KEYS = (("train", "seed"), ("ensemble", "seeds"), ("data", "seed"))
NOT_CONFIG_KEYS = UNHASHED_KEYS + SEED_KEYS + (("train", "device"),)


def drop_keys(d: dict, paths) -> dict:
    """A copy of a recipe dict without the keys at these paths (tuples of section names)."""
    d = copy.deepcopy(d)
    for path in paths:
        node = d
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return d


def recipe_hash(recipe: Recipe) -> str:
    d = drop_keys(recipe.to_dict(), UNHASHED_KEYS)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# What a recipe's values may be, anywhere in it: YAML's plain types, bounded. Checked before anything copies or
# validates the values, so that an alias that contains itself or 10**30 in a transform's parameters fails here.
MAX_VALUES = 10_000  # values in one recipe (a recipe holds a few dozen; YAML aliases can repeat sections)
MAX_DEPTH = 32  # levels of nesting (search.params.<key>.choices[i] is 5)
MAX_TEXT = 4096  # characters in one string or key (PATH_MAX on Linux)
MAX_FILE_BYTES = 1_000_000


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


def parse_override(text: str, source: str | None = None) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); the value is read as YAML. `source`: the recipe, for messages."""
    on = f" on {source}" if source else ""
    if not isinstance(text, str) or "=" not in text:
        raise RecipeError(f"override {text!r}{on} must look like key.path=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RecipeError(f"--set {text}{on}: the value of '{key.strip()}', {value.strip()!r}, is not valid YAML "
                          f"({problem}); close brackets and quote strings, e.g. --set 'tta.modes=[none, hflip]' or "
                          f"--set 'name=\"a: b\"'") from None


def set_path(raw: dict, key: str, value: Any) -> dict:
    """A copy of the raw recipe dict with `key` (dotted) set to value."""
    raw = copy.deepcopy(raw)
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise RecipeError(f"cannot set {key!r}: {p!r} is not a section (it holds {_short(node[p])})")
        node = node[p]
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides, source: str = "<recipe>") -> dict:
    """raw with each override set: a dict {key: value}, pairs (key, value) or 'key=value' strings. Each key must
    be a recipe key and each value of its type, else a RecipeError naming the override and `source`."""
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for o in items:
        key, value = parse_override(o, source) if isinstance(o, str) else o
        where = f"--set {o}" if isinstance(o, str) else f"override {key}={_short(value)}"
        where += f" on {source}"
        _check_override(key, value, where)
        try:
            raw = set_path(raw, key, value)
        except RecipeError as e:  # the recipe holds a value where the key path needs a section
            raise RecipeError(f"{where}: {e}") from None
    return raw


def _check_override(key, value, where: str) -> None:
    """`key` names a recipe key (the same 'unknown key' message as in a file) and `value` has its type."""
    if not isinstance(key, str) or not key or not all(key.split(".")):
        raise RecipeError(f"{where}: {key!r} is not a key path; write section.key=value, e.g. train.lr=3e-4")
    parts, cls = key.split("."), Recipe
    for i, part in enumerate(parts):
        loc, rest = tuple(parts[:i + 1]), parts[i + 1:]
        if part not in cls.model_fields:
            raise RecipeError(_unknown_key(loc, list(cls.model_fields), where))
        if cls is SearchSpec and part == "params" and rest:
            raise RecipeError(_search_params_hint(".".join(rest), value, where))
        ann = cls.model_fields[part].annotation
        if rest and isinstance(ann, type) and issubclass(ann, Spec):
            cls = ann
            continue
        if rest:
            raise RecipeError(f"{where}: '{_key(loc)}' is a value, not a section; set it whole, "
                              f"e.g. --set '{_key(loc)}=...' (a list or mapping in YAML)")
        _check_plain(value, where, loc)
        try:  # the field's type, bounds and validators; a section (--set 'train={lr: 0.1}') replaces the file's
            cls.__pydantic_validator__.validate_assignment(cls.model_construct(), part, value)
        except ValidationError as e:
            raise RecipeError(_explain(e, where, loc[:-1])) from None


def _search_params_hint(rest: str, value, where: str) -> str:
    # search.params keys are recipe key paths themselves (train.lr): --set splits them at every dot
    field = rest.rsplit(".", 1)
    name, attr = (field[0], field[1]) if len(field) == 2 and field[1] in SearchParam.model_fields else (rest, None)
    body = f"{{{attr}: {_short(value)}, ...}}" if attr else "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
    return (f"{where}: search.params keys hold dots ({name}) and --set splits keys at dots, so it cannot reach "
            f"search.params.{rest}; write it in the recipe file: search: {{params: {{{name}: {body}}}}} "
            f"(or give the whole mapping: --set 'search.params={{{name}: {body}}}')")


def read_yaml(path) -> dict:
    """The recipe file as a mapping ({} when the file is empty or holds only comments)."""
    path = Path(path)
    if not _is_file(path):
        raise RecipeError(f"recipe file {path} does not exist" + (" (it is a folder)" if _is_dir(path) else ""))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RecipeError(f"recipe file {path} is {size:,} bytes; a recipe is a few KB of YAML "
                              f"(at most {MAX_FILE_BYTES:,}): is it the right file?")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"cannot read recipe file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except RecursionError:
        raise RecipeError(f"{path} is nested too deeply to read; a recipe is a few levels of sections") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a YAML {type(raw).__name__}")
    _check_plain(raw, str(path))
    return raw


def load_recipe(path, overrides=()) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, validate everything that can be checked up front."""
    raw = read_yaml(path)
    stated = bool(raw)
    raw.setdefault("name", Path(path).stem)
    recipe = recipe_from_dict(apply_overrides(raw, overrides, source=str(path)), source=str(path))
    if not stated:  # refused after the overrides are checked, so that their mistakes are reported first
        raise RecipeError(f"recipe file {path} is empty (or holds only comments): it would train every default "
                          f"without saying so. A recipe states at least its data, e.g. `data: {{source: imagefolder, "
                          f"root: path/to/images}}`, or `data: {{source: digits}}` for the built-in digits (see "
                          f"recipes/quickstart.yaml); every other key has a default (kit/recipe.py)")
    return recipe


def recipe_from_dict(raw: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{source} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a {type(raw).__name__}")
    _check_plain(raw, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e, source)) from None
    _check_semantics(recipe, source)
    return recipe


def _spec_at(loc) -> type[Spec] | None:
    """The spec class that owns the key at `loc` (a pydantic error location)."""
    cls, parts = Recipe, list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if cls is SearchSpec and part == "params" and parts:
            parts.pop(0)  # the searched key's name
            cls = SearchParam
            continue
        ann = getattr(cls.model_fields.get(part), "annotation", None) if isinstance(part, str) else None
        if not (isinstance(ann, type) and issubclass(ann, Spec)):
            return None
        cls = ann
    return cls


def _unknown_key(loc: tuple, valid: list, source: str) -> str:
    section = _key(loc[:-1]) or "top level"
    hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    return (f"unknown key '{_key(loc)}' in {source}"
            + (f" (did you mean '{_key(loc[:-1] + (hint[0],))}'?)" if hint else "")
            + f"; keys under '{section}': {', '.join(valid)}")


def _without_union_tags(loc: tuple) -> tuple:
    """pydantic names the member of a Union field it tried (data.num_workers.literal['auto']); the user wrote
    data.num_workers."""
    cls, out, skip = Recipe, [], False
    for part in loc:
        if skip and isinstance(part, str):  # the member's tag
            skip = False
            continue
        skip = False
        out.append(part)
        field = cls.model_fields.get(part) if cls is not None and isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        cls = ann if isinstance(ann, type) and issubclass(ann, Spec) else None
        # Optional[X] is a Union too, but pydantic tags only unions of two or more types besides None
        skip = typing.get_origin(ann) is Union and len(set(typing.get_args(ann)) - {type(None)}) > 1
    return tuple(out)


def _explain(e: ValidationError, source: str, prefix: tuple = ()) -> str:
    lines: dict[str, list] = {}  # key -> [got, messages] (a Union field's members fail one by one: one line)
    for err in e.errors():
        loc = _without_union_tags(tuple(prefix) + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            cls = _spec_at(loc)
            lines[_unknown_key(loc, list(cls.model_fields) if cls else [], source)] = []
            continue
        got = "" if err["type"] in ("missing", "value_error") else f" (got {_short(err.get('input'))})"
        line = lines.setdefault(f"recipe key '{_key(loc)}' in {source}: ", [got])
        line.append(err["msg"].removeprefix("Value error, "))
    return "\n".join(k + (" or ".join(dict.fromkeys(v[1:])) + v[0] if v else "") for k, v in lines.items())


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


def _check_semantics(r: Recipe, source: str) -> None:
    def fail(key, msg):
        raise RecipeError(f"recipe key '{key}' in {source}: {msg}")

    if r.data.source in ("imagefolder", "kaggle"):
        if not r.data.root:
            fail("data.root", f"data.source={r.data.source} needs data.root, the dataset folder")
        if not _is_dir(r.data.root):
            fail("data.root", f"folder {r.data.root} does not exist (resolved to {os.path.abspath(r.data.root)}); "
                              f"fix the path")
        csv = Path(r.data.root) / r.data.train_csv
        if r.data.source == "kaggle" and not _is_file(csv):
            fail("data.train_csv", f"{csv} does not exist; set data.train_csv to the labels CSV")
    if r.model.weights not in ("auto", "hub", "offline", "none") and not _is_file(r.model.weights):
        fail("model.weights", f"file {r.model.weights} does not exist; use auto, hub, offline, none or a weights file")
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
    _check_backbone(r.model.backbone, "model.backbone", source)
    _check_stages(r.model, source)
    for i, over in enumerate(r.ensemble.backbones):
        _check_backbone_keys(i, over, source)
        backbone_recipe(r, i, source)
    for key, p in r.search.params.items():
        _check_search_param(r, key, p, source)
    for i, item in enumerate(r.augment.train):
        _check_transform(i, item, source, r.augment.input_size or 224)


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


def backbone_overrides(over: dict) -> dict:
    """ensemble.backbones[i] ({section: {key: value}}) as dotted overrides {"section.key": value}."""
    return {f"{section}.{k}": v for section, values in over.items() for k, v in (values or {}).items()}


def backbone_recipe(recipe: Recipe, i: int, source: str = "<recipe>") -> Recipe:
    """The recipe of ensemble.backbones[i]: the run's recipe with that entry's overrides, as one member sees it
    (its ensemble section reset: a member is not an ensemble)."""
    over = dict(backbone_overrides(recipe.ensemble.backbones[i]), ensemble=EnsembleSpec().model_dump())
    return recipe.with_overrides(over, source=f"{source} (ensemble.backbones[{i}])")


def _check_backbone(name: str, key: str, source: str) -> None:
    import timm
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise RecipeError(f"recipe key '{key}' in {source}: {name!r} is not a timm model"
                          + (f"; did you mean {', '.join(close)}?" if close else ".")
                          + " List them with python -c \"import timm; print(timm.list_models('*pattern*'))\"")


@lru_cache(maxsize=64)
def _stage_layout(spec: ModelSpec) -> tuple[tuple[str, ...], int] | None:
    """(the modules of timm's feature_info, which cut_at indexes; the number of stages frozen_stages counts) of
    the model training would build, or None when it cannot be built without memory. Built on the meta device:
    no weights are allocated (efficientnet_lite0: 0.03 s, vit_huge: 0.2 s)."""
    import timm
    import torch
    from kit.models.backbone import build_model
    from kit.models.strategies import stage_groups
    try:
        with torch.device("meta"):
            info = getattr(timm.create_model(spec.backbone, pretrained=False), "feature_info", None) or []
            names = tuple(str(f.get("module", i)) for i, f in enumerate(info))
            if spec.cut_at is not None and spec.cut_at >= len(names):
                return names, 0
            model, _ = build_model(spec, None, load_weights=False)
            return names, len(stage_groups(model))
    except Exception:  # e.g. a model that calls .item() while it is built: training builds it and checks again
        return None


def _check_stages(m: ModelSpec, source: str) -> None:
    """model.cut_at and model.frozen_stages within the backbone's stages (they fail once training starts)."""
    frozen = m.frozen_stages > 0 and m.strategy in ("finetune", "cut_at")
    if m.cut_at is None and not frozen:
        return
    layout = _stage_layout(m)
    if layout is None:
        return
    names, n_stages = layout
    if m.cut_at is not None and m.cut_at >= len(names):
        stages = ", ".join(f"{i}: {n}" for i, n in enumerate(names)) or "none"
        raise RecipeError(f"recipe key 'model.cut_at' in {source}: {m.cut_at} is out of range for {m.backbone}, "
                          f"whose stages (timm feature_info) are {stages}; use 0..{len(names) - 1}"
                          if names else f"recipe key 'model.cut_at' in {source}: {m.backbone} has no stages timm "
                                        f"can cut at (no feature_info); use another strategy or backbone")
    if frozen and m.frozen_stages > n_stages:
        raise RecipeError(f"recipe key 'model.frozen_stages' in {source}: {m.frozen_stages}, but {m.backbone} has "
                          f"{n_stages} stages (stem + blocks, timm's group_matcher); use 0..{n_stages}")


def _check_transform(i: int, item: dict, source: str, size: int = 224) -> None:
    """augment.train[i] built as training builds it (kit.data.transforms.build_transform, strict), so the two
    cannot disagree; `size` fills RandomResizedCrop's size as the backbone's input size would."""
    import inspect
    import albumentations as A
    from kit.data.transforms import build_transform
    (name, params), = item.items()
    key = f"augment.train[{i}].{name}"
    def usable(n):  # a transform class, not one of albumentations' base classes (they build, then cannot run)
        c = getattr(A, n, None)
        return (isinstance(c, type) and issubclass(c, A.BasicTransform)
                and (n == "NoOp" or not c.__module__.endswith("transforms_interface")))
    cls = getattr(A, name, None)
    if not usable(name):
        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper() and usable(n)], n=3)
        raise RecipeError(f"recipe key '{key}' in {source}: not an albumentations transform"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        build_transform(i, item, size)
    except ValueError as e:
        valid = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                 if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = [p for p in (params or {}) if p not in valid and p != "strict"]
        if unknown:
            hints = [f"'{u}' (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(str(u), valid, n=1))
                     else f"'{u}'" for u in unknown]
            why = f"unknown parameter {', '.join(hints)}; parameters of {name}: {', '.join(valid)}"
        else:
            why = f"invalid parameters {params}: {_transform_error(e)}"
        raise RecipeError(f"recipe key '{key}' in {source}: {why}") from None


def _transform_error(e: ValueError) -> str:
    """albumentations' pydantic error (kept as build_transform's __context__) in one line, by parameter."""
    inner = e.__context__
    while inner is not None and not isinstance(inner, ValidationError) and inner.__context__ is not None:
        inner = inner.__context__  # albumentations re-raises pydantic's error as a ValueError
    if isinstance(inner, ValidationError):
        by_param: dict[str, list[str]] = {}
        for err in inner.errors():
            name = f"{err['loc'][0]}" if err["loc"] else "parameters"
            by_param.setdefault(name, [f"got {_short(err.get('input'))}"]).append(err["msg"])
        return "; ".join(f"{k}: {' or '.join(dict.fromkeys(v[1:]))} ({v[0]})" for k, v in by_param.items())
    return " ".join(str(inner or e).split())


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
