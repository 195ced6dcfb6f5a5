"""A recipe: the YAML file that drives a whole run, loaded into typed, frozen specs.

Defaults live here and only here; a recipe file states what differs. Unknown keys, wrong types and
missing paths fail in `load_recipe`, before any work starts, with the file, the key and the fix.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


from kit.errors import RecipeError  # noqa: E402  (re-exported: kit.recipe.RecipeError)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    digits_size: int = Field(32, ge=8)  # pixels each digit is upscaled to (before the backbone's resize)
    digits_test_fraction: float = Field(0.2, gt=0, lt=1)  # held back as the unlabelled "test" set
    # Split of the labelled images into training and validation.
    split: Literal["holdout", "kfold"] = "holdout"
    folds: int = Field(5, ge=2)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0  # seed of the split; members' own seeds are in train.seed / ensemble.seeds
    num_workers: int = Field(2, ge=0)  # DataLoader worker processes preparing batches beside training
    limit: Optional[int] = Field(None, ge=2)  # use only the first N labelled images (smoke tests)
    # Images that cannot be decoded (found by a scan of every image before training): fail lists them all and
    # stops; skip trains without them and lists them in the run directory (bad_images.csv) and the summary.
    bad_images: Literal["fail", "skip"] = "fail"


class AugmentSpec(Spec):
    # albumentations transforms by class name, applied to training images before resize/normalise.
    # RandomResizedCrop gets its size from the backbone unless given. Default: crop + horizontal flip.
    train: list[dict[str, dict]] = Field(
        default_factory=lambda: [{"RandomResizedCrop": {"scale": [0.6, 1.0]}}, {"HorizontalFlip": {"p": 0.5}}])
    input_size: Optional[int] = Field(None, ge=8)  # default: the backbone's pretrained config
    crop_pct: Optional[float] = Field(None, gt=0, le=1)  # eval resize = input_size / crop_pct, then centre crop

    @field_validator("train")
    @classmethod
    def _one_transform_per_item(cls, v):
        for i, item in enumerate(v):
            if len(item) != 1:
                raise ValueError(f"item {i} must be one 'TransformName: {{params}}' mapping, got {sorted(item)}")
        return v


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
    head_hidden: int = Field(512, ge=1)  # mlp head width
    head_c: float = Field(1.0, gt=0)  # logreg / svm inverse regularisation strength
    head_views: int = Field(1, ge=1)  # feature_extract: cached views per training image (1 = no flips)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    channels_last: Optional[bool] = None  # None: on (measured faster for convnets on CPU and CUDA)


class TrainSpec(Spec):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
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
    accum_steps: int = Field(1, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    early_stopping: Optional[int] = Field(None, ge=1)  # patience in epochs on the validation metric
    metric: Literal["accuracy", "log_loss", "f1_macro"] = "accuracy"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA when supported, off on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0


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
    scales: list[float] = Field(default_factory=lambda: list(TTA_DEFAULT_SCALES))  # multiscale factors
    original_weight: Optional[float] = Field(None, ge=0, le=1)  # weight of the un-augmented view
    max_batch_views: int = Field(256, ge=1)  # images x views in one forward pass (memory budget)

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v):
        _check_known(v, TTA_MODES, "TTA modes")
        if not v:
            raise ValueError("at least one mode is needed, e.g. [none]")
        return v


# Blending methods compared by kit.ensemble.evaluate_methods, simplest first ("best": the best single member,
# chosen on the fitting folds like any fitted blend, so that "no blend" is always a candidate).
BLEND_METHODS = ("best", "mean", "gmean", "rank", "weights", "greedy")


class EnsembleSpec(Spec):
    seeds: Optional[list[int]] = None  # member seeds; default: [train.seed]
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


class SearchParam(Spec):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Any]] = None


class SearchSpec(Spec):
    params: dict[str, SearchParam] = Field(default_factory=dict)  # recipe key path -> distribution
    trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    fold: int = Field(0, ge=0)  # each trial trains this fold (or the holdout)
    seed: int = 0
    storage: Optional[str] = None  # SQLAlchemy URL; default: sqlite file in the run directory
    study_name: Optional[str] = None  # default: the recipe name
    top_k: int = Field(3, ge=1)  # best trials kept as ensemble members


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
        raw = apply_overrides(self.to_dict(), overrides)
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


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.path=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def set_path(raw: dict, key: str, value: Any) -> dict:
    """A copy of the raw recipe dict with `key` (dotted) set to value."""
    raw = copy.deepcopy(raw)
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise RecipeError(f"cannot set {key!r}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides) -> dict:
    """raw with each override set: a dict {key: value}, pairs (key, value) or 'key=value' strings."""
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for o in items:
        key, value = parse_override(o) if isinstance(o, str) else o
        raw = set_path(raw, key, value)
    return raw


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections (data:, model:, train:, ...)")
    return raw


def load_recipe(path, overrides=()) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, validate everything that can be checked up front."""
    raw = read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    return recipe_from_dict(apply_overrides(raw, overrides), source=str(path))


def recipe_from_dict(raw: dict, source: str = "<recipe>") -> Recipe:
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


def _explain(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            cls = _spec_at(loc)
            valid = list(cls.model_fields) if cls else []
            section = ".".join(str(p) for p in loc[:-1]) or "top level"
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            lines.append(f"unknown key '{key}' in {source}"
                         + (f" (did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?)" if hint else "")
                         + f"; keys under '{section}': {', '.join(valid)}")
        else:
            got = err.get("input")
            got = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"recipe key '{key}' in {source}: {err['msg']}{got}")
    return "\n".join(lines)


def _check_semantics(r: Recipe, source: str) -> None:
    def fail(key, msg):
        raise RecipeError(f"recipe key '{key}' in {source}: {msg}")

    if r.data.source in ("imagefolder", "kaggle"):
        if not r.data.root:
            fail("data.root", f"data.source={r.data.source} needs data.root, the dataset folder")
        root = Path(r.data.root)
        if not root.is_dir():
            fail("data.root", f"folder {root} does not exist (resolved to {root.resolve()}); fix the path")
        if r.data.source == "kaggle" and not (root / r.data.train_csv).is_file():
            fail("data.train_csv", f"{root / r.data.train_csv} does not exist; set data.train_csv to the labels CSV")
    if r.model.weights not in ("auto", "hub", "offline", "none") and not Path(r.model.weights).is_file():
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
    for i, over in enumerate(r.ensemble.backbones):
        bad = sorted(set(over) - {"model", "train", "augment", "tta"})
        if bad:
            fail(f"ensemble.backbones[{i}]", f"sections {bad} cannot vary per backbone; use model, train, augment, tta")
        backbone_recipe(r, i, source)
    for key, p in r.search.params.items():
        _check_search_param(r, key, p, source)
    for i, item in enumerate(r.augment.train):
        _check_transform(i, item, source)


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


def _check_transform(i: int, item: dict, source: str) -> None:
    import albumentations as A
    (name, params), = item.items()
    key = f"augment.train[{i}].{name}"
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper()], n=3)
        raise RecipeError(f"recipe key '{key}' in {source}: not an albumentations transform"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    if name == "RandomResizedCrop":
        params = {"size": (32, 32), **(params or {})}
    try:
        cls(**(params or {}))
    except Exception as e:  # albumentations validates its arguments with pydantic
        raise RecipeError(f"recipe key '{key}' in {source}: invalid parameters {params}: {e}") from None


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
