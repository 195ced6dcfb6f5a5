"""The sections of a recipe as spec classes: every default of a run lives here (and the Recipe itself in
kit.recipe._recipe). A recipe file states what differs; pydantic refuses unknown keys, wrong types and values out
of their bounds, section by section.
"""
from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Spec(BaseModel):
    # NaN and inf are refused: `lr: .inf` passes gt=0, and a float without bounds takes NaN too. (Read from YAML,
    # _check_plain below refuses them first, anywhere in a recipe, naming the key.)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, v, info: ValidationInfo):
        # pydantic reads `epochs: true` as 1 and `ema: 1` as true; a recipe means what it writes
        return _strict_bool(v, cls.model_fields[info.field_name].annotation)


def _kinds(ann) -> set:
    """The plain kinds a field's annotation accepts: bool, int, float, str, none, list, dict, any, other."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _kinds(typing.get_args(ann)[0])
    if origin is Union:
        return set().union(*(_kinds(a) for a in typing.get_args(ann)))
    if origin is Literal:
        return {type(a).__name__ for a in typing.get_args(ann)}
    if origin in (list, tuple, dict):
        return {"list" if origin is not dict else "dict"}
    named = {bool: "bool", int: "int", float: "float", str: "str", type(None): "none", Any: "any"}
    return {named.get(ann, "other")}


def _strict_bool(v, ann):
    """`v` unless it is a boolean where a number is meant (true is not 1) or a number or string where a boolean
    is (1 is not true); a list of numbers is checked item by item."""
    kinds = _kinds(ann)
    if isinstance(v, bool) and kinds & {"int", "float"} and not kinds & {"bool", "any"}:
        raise ValueError(f"{str(v).lower()} is a boolean, not a number; write the number meant, e.g. "
                         f"{int(v)}")
    kind = type(v).__name__
    if (not isinstance(v, bool) and isinstance(v, (int, float, str)) and "bool" in kinds and kind not in kinds
            and "any" not in kinds and not (kind == "int" and "float" in kinds)):
        raise ValueError(f"{v!r} is not a boolean; write true or false")
    if isinstance(v, list) and typing.get_origin(ann) is not Union and "list" in kinds:
        args = typing.get_args(typing.get_args(ann)[0] if typing.get_origin(ann) is Annotated else ann)
        for item in v if args else ():
            _strict_bool(item, args[0])
    elif isinstance(v, list) and typing.get_origin(ann) is Union:  # Optional[list[...]], Union[bool, list[...]]
        for a in typing.get_args(ann):
            if typing.get_origin(a) is list:
                _strict_bool(v, a)
    return v


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


def _distinct(seeds: Optional[list]) -> Optional[list]:
    # members are named and stored by seed: a repeated seed would be one member counted twice
    if seeds is None:
        return seeds
    if not seeds:
        raise ValueError("at least one seed is needed, e.g. [0]")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"seeds must be distinct; {dup} repeat{'s' * (len(dup) == 1)}")
    return seeds


class DataSpec(Spec):
    source: Literal["digits", "imagefolder", "kaggle"] = "digits"
    root: Optional[str] = None  # folder of an imagefolder / kaggle dataset, relative to the current directory
    # Kaggle-style folder: root/train.csv (id or path column + label column), root/<image_dir>/, root/<test_dir>/
    train_csv: str = "train.csv"
    id_column: str = "id"
    label_column: str = "label"  # the target: a class, a 0/1, space-separated tags, a grade or a real value
    # several labels, one 0/1 column each (multilabel; or multiclass when each row holds exactly one 1, as
    # plant-pathology-2020); replaces label_column
    label_columns: Optional[list[str]] = None
    tag_separator: str = Field(" ", min_length=1)  # multilabel tags in one column: what separates them
    # rows of one group (a patient, a subject) stay in one fold; the holdout takes whole groups
    group_column: Optional[str] = None
    # labels in the file names, no labels CSV (dogs-vs-cats: train/cat.123.jpg): a regular expression whose first
    # group, searched in each file name of data.image_dir, is the image's label (e.g. '^([a-z]+)\.'); the id is the
    # file name without its extension
    label_pattern: Optional[str] = None
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
    # a stratified sample of N labelled images, drawn with data.seed (VTAB-1k's 1,000 a task; kit bench's
    # `sample:`): the same images for every recipe and seed of the same data, listed in each run's folds.csv
    sample: Optional[int] = Field(None, ge=2)
    # Images that cannot be decoded (found by a scan of every image before training): fail lists them all and
    # stops; skip trains without them and lists them in the run directory (bad_images.csv) and the summary.
    bad_images: Literal["fail", "skip"] = "fail"
    # holdout only: after the holdout has chosen each member's epochs, TTA mode and blend weight, train it again on
    # every labelled image for those epochs (members <config>-refit) and predict the test images with that one
    # (Kaggle practice: 25 % more data for the submission); its validated twin keeps the scores. A list of seeds
    # refits each validated member once per seed (<config>-refit for its own seed, <config>-refit-s<seed> for
    # another), their test probabilities averaged: validate one seed (ensemble.seeds: [0]) and submit several
    # (refit: [0, 1, 2]), as Kaggle competitors do.
    refit: Union[bool, list[Seed]] = False

    @field_validator("label_pattern")
    @classmethod
    def _one_group(cls, v):
        if v is None:
            return v
        try:
            groups = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"{v!r} is not a regular expression ({e}); e.g. '^([a-z]+)\\.' for cat.123.jpg")
        if groups < 1:
            raise ValueError(f"{v!r} has no group; put the label part in parentheses, e.g. '^([a-z]+)\\.'")
        return v

    @field_validator("refit")
    @classmethod
    def _distinct_refit_seeds(cls, v):
        return v if isinstance(v, bool) else _distinct(v)

    def refit_seeds(self, seed: int) -> list[int]:
        """The seeds a validated member of seed `seed` is refitted with: [] without refit (or with k-fold), [seed] for
        refit: true, else the listed seeds."""
        if not self.refit or self.split != "holdout":
            return []
        return [seed] if self.refit is True else list(self.refit)

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
    # RandomResizedCrop gets its size from the backbone unless given. Default: horizontal flips only. Measured on
    # the Fashion-MNIST development competition (efficientnet_lite0 at 64 px): RandomResizedCrop(0.6-1) + flip
    # 0.857 test accuracy at 3 epochs, RandomResizedCrop(0.7-1, ratio 0.9-1.1) + flip 0.871, flip only 0.885;
    # at 10 epochs flip only still validated higher (0.919 against 0.912). Crops are the first thing to add for
    # long runs on photos (benchmarks/README.md).
    train: list[dict[str, dict]] = Field(
        default_factory=lambda: [{"HorizontalFlip": {"p": 0.5}}])
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
    # feature_extract's head: linear / mlp (torch, every task), logreg (classes; one logistic per label for 0/1 and
    # several labels), svm (classes), ridge (grades and real values)
    head: Literal["linear", "mlp", "logreg", "svm", "ridge"] = "linear"
    head_hidden: int = Field(512, ge=1, le=65536)  # mlp head width (1280 x 65536 = 84M weights at most)
    head_c: float = Field(1.0, gt=0)  # logreg / svm inverse regularisation strength
    head_views: int = Field(1, ge=1, le=64)  # feature_extract: cached views per training image (1 = no flips)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    channels_last: Optional[bool] = None  # None: timed once in the plan (both formats), the faster kept
    # CPU training: the weight gradient of depthwise convolutions whose kernel is wider than their input taken tap by
    # tap (kit.models.depthwise: oneDNN's is 4-29x slower there); None: timed once in the plan, the faster kept
    depthwise_taps: Optional[bool] = None


# train.lr when a recipe gives none, by model.strategy (resolved in the plan, after `strategy: auto`): the peak lr
# of the head, and of every layer for `full` (backbone groups of the other strategies take model.backbone_lr_scale
# of it). full: measured on the Fashion-MNIST development competition, 6 epochs, one seed (benchmarks/README.md):
# 1e-3 -> 3e-3 gained 2.15 points of test accuracy and 0.9 of validation; the others keep the 1e-3 they had
# (not measured against another value).
LR_BY_STRATEGY = {"full": 3e-3, "finetune": 1e-3, "gradual": 1e-3, "cut_at": 1e-3, "feature_extract": 1e-3}


class TrainSpec(Spec):
    # Upper bounds here only catch typos and overflows (10**12 epochs), not taste.
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    # the head's lr; the backbone's is scaled by model.backbone_lr_scale. None: LR_BY_STRATEGY (lr_for)
    lr: Optional[float] = Field(None, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "onecycle", "none"] = "cosine"
    # lr warm-up; None: 10 % of the run, at most one epoch (measured on the Fashion-MNIST development competition
    # at 3 epochs: a whole-epoch warm-up, a third of that run at a low lr, cost 1.3 points of test accuracy)
    warmup_epochs: Optional[float] = Field(None, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0)  # mixup alpha (0: off)
    cutmix: float = Field(0.0, ge=0)  # cutmix alpha (0: off)
    ema: bool = False
    ema_decay: float = Field(0.998, gt=0, lt=1)
    accum_steps: int = Field(1, ge=1, le=4096)
    grad_clip: Optional[float] = Field(None, gt=0)
    early_stopping: Optional[int] = Field(None, ge=1)  # patience in epochs on the validation metric
    # the validation metric (early stopping, TTA and blend choice, tuning, the leaderboard); auto: the task's
    # (kit.task.DEFAULT_METRIC: accuracy for classes, roc_auc for a 0/1, qwk for grades, rmse for real values)
    metric: Literal["auto", "accuracy", "log_loss", "f1_macro", "f1_micro", "f2_samples", "roc_auc", "qwk", "rmse",
                    "mae"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA when supported, off on CPU
    # torch.compile the model for training and prediction; off: on this 2-core CPU it was slower
    # (benchmarks/bench_compile.py; measure it on a GPU before turning it on)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: Seed = 0

    @property
    def warmup(self) -> float:
        """Warm-up in epochs: train.warmup_epochs, or (None) 10 % of the run, at most 1 epoch."""
        return min(1.0, 0.1 * self.epochs) if self.warmup_epochs is None else float(self.warmup_epochs)

    def lr_for(self, strategy: str) -> float:
        """train.lr, or (None) the default of `strategy` (LR_BY_STRATEGY); `auto` must be resolved first."""
        if self.lr is not None:
            return float(self.lr)
        if strategy not in LR_BY_STRATEGY:
            raise ValueError(f"model.strategy {strategy!r} has no default lr: resolve 'auto' first (kit.plan), "
                             f"or set train.lr; strategies: {', '.join(LR_BY_STRATEGY)}")
        return LR_BY_STRATEGY[strategy]

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
        return _distinct(v)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v):
        return _check_known(v, BLEND_METHODS, "blending methods")


TASK_KINDS = ("multiclass", "binary", "multilabel", "ordinal", "regression")


class TaskSpec(Spec):
    # What the target is (kit.task, resolved once in the plan): multiclass (one class per image), binary (a 0/1
    # column, one probability out), multilabel (several labels per image: tags in one column or one 0/1 column
    # each), ordinal (integer grades, regressed then cut), regression (a real value); auto: from the target's values
    # (kit init writes the kind it found, with its reason)
    kind: Literal[("auto",) + TASK_KINDS] = "auto"
    # auto: cross-entropy (multiclass, with train.label_smoothing; ordinal: the grades as classes, their expected
    # grade the score), BCE on logits (binary, multilabel), MSE on the standardised value (regression); mse / huber
    # regress an ordinal grade; huber: a robust loss for noisy real values
    loss: Literal["auto", "cross_entropy", "bce", "mse", "huber"] = "auto"
    pos_weight: Optional[float] = Field(None, gt=0)  # binary / multilabel BCE: weight of the positives
    # ordinal / regression: [low, high] of the target; values outside are errors, predictions are clipped to it;
    # default: the training targets' range
    range: Optional[list[float]] = None
    # the rule from scores to submitted values where the metric depends on it (thresholds per label for F1/F-beta,
    # cut-points for kappa, a threshold for a 0/1 label): fit, fitted on out-of-fold predictions and kept when its
    # nested estimate beats the default rule (argmax, 0.5, rounding); default: the default rule
    decision: Literal["fit", "default"] = "fit"

    @field_validator("range")
    @classmethod
    def _low_high(cls, v):
        if v is not None and (len(v) != 2 or not v[0] < v[1]):
            raise ValueError(f"task.range is [low, high] with low < high, got {v}; e.g. [0, 4]")
        return v


class SubmitSpec(Spec):
    # label: the decided values (a class name, 0/1, tags, a grade, a clipped value); proba: the scores (one
    # probability column per class or label, P(1) of a 0/1, the value itself); auto: proba when the sample
    # submission holds probabilities (non-integer numbers), else label
    format: Literal["auto", "label", "proba"] = "auto"
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

    @field_validator("storage")
    @classmethod
    def _storage_without_password(cls, v):
        # kept without its password (kit.dburl: used to connect, never written or printed): recipe.yaml, plan.json
        # and the leaderboard's rows hold this value
        from kit.dburl import without_password
        return without_password(v)

