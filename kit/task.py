"""The task: what a competition's target is, resolved once (kit.data.sources reads it, the plan stores it) and the
one place that knows its kind. Every other module asks it.

    kind        scores p (n, K), what models, TTA views, members and blends produce     targets y
    multiclass  K classes, softmax probabilities (rows sum to 1)                       int (n,): class index
    binary      K = 1, P(y = 1), a sigmoid                                              int (n,): 0/1
    multilabel  K labels, independent sigmoid probabilities                             int (n, K): 0/1
    ordinal     K = 1, the grade as a real number (expected or regressed, then cut)      int (n,): the grade
    regression  K = 1, the value                                                        float (n,)

It owns: reading the target from a CSV (read_targets, detect_kind), the model's outputs and activation (n_outputs,
activate), the training targets and loss (train_targets, create_loss), the space TTA views and members merge in
(softmax: log-probabilities for multiclass, the scores themselves otherwise), the metrics that make sense and the
default one (metrics, DEFAULT_METRIC), the blends and TTA merges that mean something, what a teacher can teach,
and the decided values a submission holds (decide; the fitted rules are in
kit.decision). numpy at import; torch only inside the functions that take tensors.

Ordinal grades are learnt as classes whose expected grade is the score (task.loss: cross_entropy, the default), or
regressed (mse, huber: on the standardised grade, as winning APTOS entries did); either score is cut at cut-points
fitted on out-of-fold predictions (kit.decision). benchmarks/bench_tasks.py measured the two (LOSSES).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from kit.errors import DataError
from kit.recipe import TASK_KINDS

KINDS = TASK_KINDS
DEFAULT_METRIC = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f2_samples", "ordinal": "qwk",
                  "regression": "rmse"}
METRICS_OF = {
    "multiclass": ("accuracy", "log_loss", "f1_macro", "f1_micro", "roc_auc"),
    "binary": ("roc_auc", "log_loss", "accuracy", "f1_macro"),
    "multilabel": ("f2_samples", "f1_micro", "f1_macro", "roc_auc", "log_loss", "accuracy"),
    "ordinal": ("qwk", "rmse", "mae", "accuracy"),
    "regression": ("rmse", "mae"),
}
# metrics of decided values (a class, a 0/1, a tag set, a grade): a decision rule fitted out of fold can move them
DECIDED_METRICS = ("accuracy", "f1_macro", "f1_micro", "f2_samples", "qwk")
# the first of each is task.loss: auto. Ordinal grades: cross_entropy reads them as classes and predicts the
# expected grade sum_k k p_k (cut at fitted cut-points like a regressed grade); mse / huber regress the standardised
# grade. Measured on the ordinal development competition (benchmarks/README.md, bench_tasks.py): classes with the
# expected grade 0.9406 test QWK, regression then cut 0.9259 (kit init's recipe, one seed each)
LOSSES = {"multiclass": ("cross_entropy",), "binary": ("bce",), "multilabel": ("bce",),
          "ordinal": ("cross_entropy", "mse", "huber"), "regression": ("mse", "huber")}
# blends that mean something per kind (kit.ensemble): gmean is a product of distributions (one softmax row); rank
# keeps an order (AUC), not a value
BLENDS_OF = {
    "multiclass": ("best", "mean", "gmean", "rank", "weights", "greedy", "stack"),
    "binary": ("best", "mean", "rank", "weights", "greedy"),
    "multilabel": ("best", "mean", "rank", "weights", "greedy"),
    "ordinal": ("best", "mean", "weights", "greedy"),
    "regression": ("best", "mean", "weights", "greedy"),
}
TTA_MERGES_OF = {"multiclass": ("mean", "gmean", "tsharpen")}  # others: mean only (a value has no root or product)
# feature_extract heads per kind (kit.features): torch heads learn any task's loss; scikit-learn's: a logistic
# regression (per label for 0/1 targets), an SVM over classes, a ridge regression on the standardised value
HEADS_OF = {"multiclass": ("linear", "mlp", "logreg", "svm"), "binary": ("linear", "mlp", "logreg"),
            "multilabel": ("linear", "mlp", "logreg"), "ordinal": ("linear", "mlp", "ridge"),
            "regression": ("linear", "mlp", "ridge")}  # ordinal as classes (task.loss cross_entropy): torch heads
MAX_GRADES = 10  # integer targets with more distinct values than this are real values, not grades
# names of a target column that say which of two readings of integers is meant (kit init's detection)
ORDINAL_NAMES = ("level", "grade", "diagnosis", "severity", "stage", "rating", "score", "rank", "count", "degree",
                 "quality", "isup", "gleason", "dr", "kl", "birads")
CLASS_NAMES = ("label", "class", "category", "species", "breed", "type", "kind", "digit", "target_class")


class TargetError(DataError):
    """A target column that cannot be read as the task says; the message names the file, row and fix."""


@dataclass(frozen=True)
class Task:
    kind: str
    outputs: tuple  # names of the score columns: classes, labels, or (the target column,)
    metric: str = ""  # the validation metric (train.metric, resolved)
    low: Optional[float] = None  # ordinal / regression: the target's range (predictions are clipped to it)
    high: Optional[float] = None
    center: float = 0.0  # ordinal / regression: the model learns (y - center) / scale
    scale: float = 1.0
    loss: str = ""  # resolved task.loss
    pos_weight: Optional[float] = None
    tag_separator: str = " "
    columns: bool = False  # the target came as one 0/1 column per class or label (data.label_columns)
    names: tuple = ()  # binary from two names (cat, dog): (the 0's, the 1's), sorted; what its label format writes
    decision: str = "fit"

    def __post_init__(self):
        object.__setattr__(self, "outputs", tuple(str(o) for o in self.outputs))
        object.__setattr__(self, "names", tuple(str(o) for o in self.names))
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; valid: {', '.join(KINDS)}")

    @property
    def n_outputs(self) -> int:
        """The model's outputs: one a class or label, one a grade (ordinal as classes), else one."""
        if self.grade_classes:
            return int(self.high - self.low) + 1
        return len(self.outputs) if self.kind in ("multiclass", "multilabel") else 1

    @property
    def score_loss(self) -> str:
        """The smooth loss of the scores themselves (what blend weights are fitted on): cross_entropy of a class
        distribution, bce of 0/1 probabilities, mse of a grade or value (also an expected grade)."""
        return {"multiclass": "cross_entropy", "binary": "bce", "multilabel": "bce"}.get(self.kind, "mse")

    @property
    def grade_classes(self) -> bool:
        """Ordinal grades learnt as classes (task.loss cross_entropy): the score is the expected grade."""
        return self.kind == "ordinal" and (self.loss or LOSSES["ordinal"][0]) == "cross_entropy"

    @property
    def softmax(self) -> bool:
        """Scores are one distribution a row (multiclass): merged as log-probabilities, renormalised."""
        return self.kind == "multiclass"

    @property
    def probabilistic(self) -> bool:
        return self.kind in ("multiclass", "binary", "multilabel")

    @property
    def metrics(self) -> tuple:
        return METRICS_OF[self.kind]

    @property
    def blends(self) -> tuple:
        return BLENDS_OF[self.kind]

    @property
    def tta_merges(self) -> tuple:
        return TTA_MERGES_OF.get(self.kind, ("mean",))

    @property
    def rule(self) -> Optional[str]:
        """The decision rule kit.decision can fit for this kind: "thresholds" (one per 0/1 column), "cuts"
        (between grades), or None (argmax; a value)."""
        return {"binary": "thresholds", "multilabel": "thresholds", "ordinal": "cuts"}.get(self.kind)

    @property
    def tags(self) -> bool:
        """Submitted as separated tags in one column, where a row may hold none."""
        return self.kind == "multilabel" and not self.columns

    @property
    def label_kind(self) -> str:
        """What a one-column label submission holds, for messages."""
        return {"multiclass": "class names", "multilabel": f"tags of the {len(self.outputs)} known labels",
                "binary": "0 or 1", "regression": "numbers",
                "ordinal": f"integer grades {self.low:g}-{self.high:g}" if self.low is not None else "integer grades"
                }[self.kind]

    @property
    def heads(self) -> tuple:
        return ("linear", "mlp") if self.grade_classes else HEADS_OF[self.kind]

    @property
    def teaches(self) -> bool:
        """Whether a blend of this task can be a teacher (pseudo-labels, distillation): soft class distributions."""
        return self.kind == "multiclass"

    def describe(self) -> str:
        """One line: the kind, its outputs, the metric."""
        what = {"multiclass": f"{len(self.outputs)} classes", "multilabel": f"{len(self.outputs)} labels",
                "binary": f"a 0/1 target {self.outputs[0]!r}",
                "ordinal": f"grades {self.low:g}-{self.high:g} in {self.outputs[0]!r}" if self.low is not None else "",
                "regression": f"real values in {self.outputs[0]!r}" + (f" ({self.low:g} to {self.high:g})"
                                                                     if self.low is not None else "")}[self.kind]
        return f"{self.kind}: {what}" + (f", scored by {self.metric}" if self.metric else "")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (tuple(v) if k in ("outputs", "names") else v) for k, v in d.items() if k in known})


def multiclass(classes, metric: str = "accuracy") -> Task:
    """The task of one class per image among `classes` (digits, image folders)."""
    return Task("multiclass", tuple(classes), metric, loss="cross_entropy")


def resolve_task(task: Task, spec, metric: str) -> Task:
    """`task` (from the data) with the recipe's choices: metric (train.metric; auto: the kind's default), loss
    (task.loss), pos_weight and decision, each checked against the kind."""
    from kit.errors import RecipeError
    metric = DEFAULT_METRIC[task.kind] if metric == "auto" else metric
    if metric not in METRICS_OF[task.kind]:
        raise RecipeError(f"recipe key 'train.metric' is {metric!r}, which does not score a {task.kind} target; "
                          f"use one of {', '.join(METRICS_OF[task.kind])} (or auto: {DEFAULT_METRIC[task.kind]})")
    loss = LOSSES[task.kind][0] if spec.loss == "auto" else spec.loss
    if loss not in LOSSES[task.kind]:
        raise RecipeError(f"recipe key 'task.loss' is {loss!r}, which does not train a {task.kind} target; use "
                          f"auto or one of {', '.join(LOSSES[task.kind])}")
    if spec.pos_weight is not None and task.kind not in ("binary", "multilabel"):
        raise RecipeError(f"recipe key 'task.pos_weight' weighs the positives of a 0/1 target; a {task.kind} "
                          f"target has none: remove it")
    return Task(**{**asdict(task), "metric": metric, "loss": loss, "pos_weight": spec.pos_weight,
                   "decision": spec.decision})


# ---------------------------------------------------------------- reading the target

def _floats(values) -> np.ndarray:
    """Each value as a float; nan where it is not a number (pandas' to_numeric, one pass)."""
    import pandas as pd
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=np.float64)


def _numbers(values, csv, column):
    """The column's values as floats; TargetError naming the first cell that is not a finite number."""
    values = list(values)
    out = _floats(values)
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        i, v = int(bad[0]), values[int(bad[0])]
        raise TargetError(f"{csv} row {i} (line {i + 2}): column {column!r} holds {v!r}, not a number; a "
                          f"{'' if v is None else 'numeric '}target needs a number in every row: fix or drop the "
                          f"row, or set task.kind (multiclass reads any text as a class name)")
    return out


def _is_integral(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(x - np.round(x)) < 1e-9))


def _as_numbers(values) -> Optional[np.ndarray]:
    """The values as floats, or None unless every one is a finite number."""
    x = _floats(values)
    return x if np.isfinite(x).all() else None


def _name_hint(column: str, words) -> bool:
    parts = re.split(r"[^a-z0-9]+", column.lower())
    return any(w in parts or column.lower() == w for w in words)


def detect_kind(df, spec, sample=None) -> tuple[str, str, bool]:
    """(kind, reason, sure) of the target data.label_column / data.label_columns of `df`: sure is False where two
    readings fit the values (integers that may be classes or grades) and only a name hinted, or nothing did; kit
    init then asks (--task), and a run reads them as classes."""
    if spec.label_columns:
        cols = df[list(spec.label_columns)]
        x = _as_numbers(cols.to_numpy().ravel())
        if x is None or not set(np.unique(x)) <= {0.0, 1.0}:
            return "multilabel", f"columns {list(spec.label_columns)}", True  # read_targets names the bad cell
        x = x.reshape(cols.shape)
        if np.all(x.sum(axis=1) == 1):
            return "multiclass", (f"{len(spec.label_columns)} 0/1 columns with exactly one 1 in every row: one "
                                  f"class per image"), True
        return "multilabel", f"{len(spec.label_columns)} 0/1 columns, rows with several 1s or none", True
    col = spec.label_column
    raw = df[col]
    present = raw.dropna().astype(str).str.strip()
    present = present[present != ""]
    if len(present) < len(raw) and len(present) and _tags_like(present, spec.tag_separator):
        return "multilabel", (f"column {col!r} holds {spec.tag_separator!r}-separated tags, and rows without any "
                              f"(images with no tags)"), True
    x = _as_numbers(present)
    sample_values = _sample_values(sample, col)
    if x is None and present.nunique() == 2 and sample_values is not None and not _is_integral(sample_values):
        first, second = sort_classes(present)
        return "binary", (f"column {col!r} holds two classes, {first!r} and {second!r}, and the sample submission "
                          f"asks for one probability: P({second!r})"), True
    if x is None:
        if _tags_like(present, spec.tag_separator):
            return "multilabel", f"column {col!r} holds {spec.tag_separator!r}-separated tags", True
        return "multiclass", f"column {col!r} holds class names", True
    distinct = np.unique(x)
    if set(distinct) <= {0.0, 1.0}:
        return "binary", f"column {col!r} holds 0 and 1", len(distinct) == 2
    if not _is_integral(x):
        return "regression", f"column {col!r} holds real values ({x.min():g} to {x.max():g})", True
    if len(distinct) > MAX_GRADES:
        return "regression", (f"column {col!r} holds {len(distinct)} distinct integers ({x.min():g} to {x.max():g}): "
                              f"more than {MAX_GRADES}, a value rather than grades or classes"), True
    contiguous = len(distinct) == distinct[-1] - distinct[0] + 1
    if sample_values is not None and not _is_integral(sample_values):
        return "regression", f"integers in {col!r}, but the sample submission holds real values", True
    if contiguous and _name_hint(col, ORDINAL_NAMES):
        return "ordinal", (f"column {col!r} holds the integers {distinct[0]:g}-{distinct[-1]:g} and its name reads "
                           f"as a grade"), True
    if _name_hint(col, CLASS_NAMES) or not contiguous:
        return "multiclass", f"column {col!r} holds integers read as class names", _name_hint(col, CLASS_NAMES)
    return "multiclass", (f"column {col!r} holds the integers {distinct[0]:g}-{distinct[-1]:g}: classes or ordered "
                          f"grades"), False


def _sample_values(sample, col) -> Optional[np.ndarray]:
    if sample is None or col not in sample.columns:
        return None
    return _as_numbers(sample[col])


def _tags_like(values, sep: str) -> bool:
    """Several labels a row: some rows hold more than one token and the tokens are fewer than the distinct values
    (combinations of a vocabulary, where class names with a space in them are each their own tokens)."""
    split = [tuple(v.split(sep)) for v in values if v]
    multi = sum(len(s) > 1 for s in split)
    tokens = {t for s in split for t in s if t}
    return multi >= max(1, 0.02 * len(split)) and len(tokens) < len(set(values))


def read_targets(df, spec, task_spec, csv, sample=None) -> tuple[Task, np.ndarray]:
    """The task (kind from task.kind, or detected) and the targets of every row of `df`, checked: one
    TargetError for what is wrong, naming the file, row and fix."""
    kind = task_spec.kind
    if kind == "auto":
        kind = detect_kind(df, spec, sample)[0]
    if spec.label_columns:
        return _read_columns(df, spec, kind, csv)
    col = spec.label_column
    raw = df[col]
    empty = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    if kind != "multilabel" and empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise TargetError(f"{csv}: column {col!r} (data.label_column) is empty at row {i} (line {i + 2} of {csv})"
                          f"{f' and {int(empty.sum()) - 1} more rows' if empty.sum() > 1 else ''}; every labelled "
                          f"image needs a target ({kind}): fill or drop those rows (for several labels an image, "
                          f"where a row may have none, set task.kind: multilabel)")
    if kind == "multiclass":
        classes = sort_classes(raw)
        index = {c: k for k, c in enumerate(classes)}
        return Task("multiclass", classes), np.array([index[str(v)] for v in raw], dtype=np.int64)
    if kind == "multilabel":
        sep = spec.tag_separator
        rows = [[] if e else [t for t in str(v).strip().split(sep) if t] for v, e in zip(raw, empty)]
        labels = sort_classes({t for r in rows for t in r})
        if not labels:
            raise TargetError(f"{csv}: column {col!r} holds no tags at all; a multilabel target needs "
                              f"{sep!r}-separated tags (data.tag_separator)")
        index = {t: k for k, t in enumerate(labels)}
        y = np.zeros((len(rows), len(labels)), dtype=np.int64)
        for i, r in enumerate(rows):
            y[i, [index[t] for t in r]] = 1
        return Task("multilabel", labels, tag_separator=sep), y
    if kind == "binary" and _as_numbers(raw) is None and raw.astype(str).nunique() == 2:  # two names: 1 = the second
        names = sort_classes(raw)
        return Task("binary", (col,), names=names), (raw.astype(str) == names[1]).to_numpy().astype(np.int64)
    x = _numbers(raw.tolist(), csv, col)
    if kind == "binary":
        bad = np.flatnonzero((x != 0) & (x != 1))
        if len(bad):
            i = int(bad[0])
            raise TargetError(f"{csv} row {i} (line {i + 2}): column {col!r} holds {raw.iloc[i]!r}, and a binary "
                              f"target is 0 or 1 ({len(bad)} rows are not); fix those rows, or set task.kind "
                              f"(ordinal for grades, multiclass for classes)")
        return Task("binary", (col,)), x.astype(np.int64)
    low, high = task_spec.range or (float(x.min()), float(x.max()))
    out = np.flatnonzero((x < low) | (x > high))
    if len(out):
        i = int(out[0])
        raise TargetError(f"{csv} row {i} (line {i + 2}): column {col!r} holds {raw.iloc[i]!r}, outside task.range "
                          f"[{low:g}, {high:g}] ({len(out)} rows are); fix those rows or widen task.range")
    center, scale = float(x.mean()), float(x.std()) or 1.0
    if kind == "ordinal":
        if not _is_integral(x):
            i = int(np.flatnonzero(np.abs(x - np.round(x)) > 1e-9)[0])
            raise TargetError(f"{csv} row {i} (line {i + 2}): column {col!r} holds {raw.iloc[i]!r}, and ordinal "
                              f"grades are integers; fix the row, or set task.kind: regression for a real value")
        if not (_is_integral(np.array([low, high]))):
            raise TargetError(f"task.range {[low, high]} of an ordinal target must be integers (the first and last "
                              f"grade)")
        return Task("ordinal", (col,), low=low, high=high, center=center, scale=scale), np.round(x).astype(np.int64)
    return Task("regression", (col,), low=low, high=high, center=center, scale=scale), x


def _read_columns(df, spec, kind: str, csv) -> tuple[Task, np.ndarray]:
    cols = list(spec.label_columns)
    if kind not in ("multilabel", "multiclass"):
        raise TargetError(f"data.label_columns gives one 0/1 column per label ({cols}); task.kind {kind} reads one "
                          f"column: set data.label_column instead, or task.kind multilabel / multiclass")
    y = np.zeros((len(df), len(cols)), dtype=np.int64)
    for j, c in enumerate(cols):
        x = _numbers(df[c].tolist(), csv, c)
        bad = np.flatnonzero((x != 0) & (x != 1))
        if len(bad):
            i = int(bad[0])
            raise TargetError(f"{csv} row {i} (line {i + 2}): column {c!r} holds {df[c].iloc[i]!r}; each of "
                              f"data.label_columns is 0 or 1 ({len(bad)} rows of {c!r} are not): fix those rows")
        y[:, j] = x.astype(np.int64)
    if kind == "multiclass":
        ones = y.sum(axis=1)
        bad = np.flatnonzero(ones != 1)
        if len(bad):
            i = int(bad[0])
            raise TargetError(f"{csv} row {i} (line {i + 2}): {int(ones[i])} of the columns {cols} hold 1, and one "
                              f"class per image needs exactly one ({len(bad)} rows differ); fix them, or set "
                              f"task.kind: multilabel")
        return Task("multiclass", tuple(cols), columns=True), np.argmax(y, axis=1).astype(np.int64)
    return Task("multilabel", tuple(cols), columns=True), y


# ---------------------------------------------------------------- describing and checking the targets

def _describe_classes(classes, counts) -> str:
    ratio = counts.max() / max(counts.min(), 1)
    shown = ", ".join(f"{c}: {n:,}" for c, n in list(zip(classes, counts))[:8]) + (", ..." if len(classes) > 8 else "")
    balance = "balanced" if ratio < 3 else ("imbalanced: accuracy favours the large classes; train.metric: f1_macro "
                                            "weighs every class alike (the competition's own metric decides)")
    return f"classes: {len(classes)}, {counts.min():,} to {counts.max():,} images each ({shown}); " \
           f"largest / smallest = {ratio:.1f}: {balance}"


def describe_targets(task: Task, labels) -> str:
    """The header comment on the target: classes and their counts; label frequencies; the positive rate; grade
    counts; the range and mean of a value."""
    y = np.asarray(labels)
    if task.kind == "multiclass":
        return _describe_classes(task.outputs, np.bincount(y, minlength=len(task.outputs)))
    n = len(y)
    if task.kind == "multilabel":
        freq = y.mean(axis=0)
        order = np.argsort(-freq, kind="stable")
        shown = ", ".join(f"{task.outputs[k]}: {freq[k]:.0%}" for k in order[:8]) + (", ..." if len(order) > 8 else "")
        none = int((y.sum(axis=1) == 0).sum())
        return (f"labels: {len(task.outputs)}, each image's share ({shown}); {y.sum(axis=1).mean():.1f} labels an "
                f"image, {none:,} images with none; rarest {task.outputs[order[-1]]!r} on "
                f"{int(y[:, order[-1]].sum()):,}")
    col = task.outputs[0]
    if task.kind == "binary":
        pos = int(y.sum())
        rate = pos / max(n, 1)
        skew = min(rate, 1 - rate)
        note = ("" if skew >= 0.1 else f"; imbalanced: ROC AUC ranks, so it is not fooled by the rare "
                f"{'1' if rate < 0.5 else '0'}s; task.pos_weight weighs the positives in the loss")
        return f"target {col!r}: {pos:,} of {n:,} images are 1 ({rate:.1%}){note}"
    if task.kind == "ordinal":
        values, counts = np.unique(y, return_counts=True)
        shown = ", ".join(f"{v:g}: {c:,}" for v, c in zip(values, counts))
        return (f"grades in {col!r}: {values[0]:g} to {values[-1]:g} ({shown}); largest / smallest = "
                f"{counts.max() / counts.min():.1f}")
    return (f"values in {col!r}: {y.min():g} to {y.max():g}, mean {y.mean():.4g}, standard deviation {y.std():.4g}, "
            f"median {np.median(y):.4g} (predictions are clipped to the range: task.range)")


def check_varies(task: Task, labels, where: str) -> None:
    """TargetError where the target does not vary: one class, no label on any image, one value."""
    y = np.asarray(labels)
    if task.kind == "multiclass":
        if len(task.outputs) < 2:
            raise TargetError(f"{where} have one class, {task.outputs}; a classifier needs two or more: add the "
                              f"other classes' images (or pass --label-column)")
        return
    if task.kind == "multilabel":
        if not y.any():
            raise TargetError(f"none of {where} has a label ({list(task.outputs)}): nothing to learn")
        return
    values = np.unique(y)
    if len(values) < 2:
        what = {"binary": "a 0/1 target needs images of both", "ordinal": "grades need two or more",
                "regression": "a value to predict needs to vary"}[task.kind]
        raise TargetError(f"column {task.outputs[0]!r} holds one value, {values[0]:g}, for all {where}; "
                          f"{what}: add images, or pass --label-column for another column")


def check_sample(task: Task, sample, path) -> None:
    """TargetError when the sample submission fits no submission of this task: its value columns are one column,
    or exactly the classes or labels (one probability or 0/1 column each); tags it holds must all be known."""
    if sample is None or sample.shape[1] < 2:
        return
    cols = [str(c) for c in sample.columns[1:]]
    if len(cols) == 1:
        if task.kind == "multilabel" and not task.columns:
            known = set(task.outputs)
            unseen = sorted({t for v in sample[cols[0]].astype(str) for t in v.split(task.tag_separator)
                             if t and t not in known})
            if unseen:
                raise TargetError(f"{path}: column {cols[0]!r} holds tags that no labelled image has, e.g. "
                                  f"{unseen[:5]}; kit predicts only the {len(known)} tags of the training data "
                                  f"({', '.join(list(task.outputs)[:8])}{', ...' if len(known) > 8 else ''}): fix "
                                  f"the tag names (case, spelling, data.tag_separator) or add labelled images")
        return
    outputs = list(task.outputs)
    if task.kind in ("multiclass", "multilabel") and set(cols) == set(outputs):
        return
    missing, extra = sorted(set(outputs) - set(cols)), sorted(set(cols) - set(outputs))
    what = (f"one column per {'class' if task.kind == 'multiclass' else 'label'} must be exactly the training "
            f"data's: columns no labelled image has {extra[:5]}, {task.kind} outputs without a column {missing[:5]}"
            if task.kind in ("multiclass", "multilabel") else
            f"a {task.kind} target is submitted in one column, and it has {len(cols)}: {cols[:6]}")
    raise TargetError(f"{path} has value columns that fit no submission of this task: {what}; fix the sample, or "
                      f"data.label_column / data.label_columns / task.kind")


def sort_classes(values) -> tuple[str, ...]:
    """Class names sorted; numerically when every name is an integer ("2" before "10")."""
    names = sorted({str(v) for v in values})
    if names and all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        names.sort(key=lambda n: (int(n), n))
    return tuple(names)


# ---------------------------------------------------------------- the model's side (torch)

def activate(task: Task, logits):
    """Model outputs [B, K] -> scores [B, K]: softmax, sigmoid, or the value in target units."""
    import torch
    logits = logits.float()
    if task.kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    if task.kind in ("binary", "multilabel"):
        return torch.sigmoid(logits)
    if task.grade_classes:  # the expected grade
        grades = torch.arange(task.n_outputs, dtype=logits.dtype, device=logits.device) + task.low
        return (torch.softmax(logits, dim=-1) * grades).sum(dim=-1, keepdim=True)
    return logits * task.scale + task.center


def view_scores(task: Task, logits):
    """One TTA view's scores in the space views merge in (kit.tta): log-probabilities for a softmax (mean,
    gmean and tsharpen are taken from them), the scores themselves otherwise (their weighted mean)."""
    import torch
    if task.softmax:
        return torch.log_softmax(logits.float(), dim=-1)
    return activate(task, logits)


def train_targets(task: Task, y: np.ndarray) -> np.ndarray:
    """Targets as the loss takes them: class (or grade) indices (int64), or float32 rows of n_outputs (the 0/1
    labels; the standardised grade or value)."""
    y = np.asarray(y)
    if task.kind == "multiclass":
        return y.astype(np.int64)
    if task.kind == "multilabel":
        return y.astype(np.float32)
    if task.kind == "binary":
        return y.astype(np.float32).reshape(-1, 1)
    if task.grade_classes:
        return (y - int(task.low)).astype(np.int64)
    return ((y.astype(np.float64) - task.center) / task.scale).astype(np.float32).reshape(-1, 1)


def create_loss(task: Task, label_smoothing: float = 0.0, soft: bool = False):
    """The loss of (model outputs, train_targets): cross-entropy (soft targets: timm's SoftTargetCrossEntropy),
    BCE on logits (task.pos_weight), MSE or Huber on the standardised target."""
    import torch
    from torch import nn
    if task.loss == "cross_entropy":
        if soft:
            from timm.loss import SoftTargetCrossEntropy
            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if task.loss == "bce":
        w = None if task.pos_weight is None else torch.full((task.n_outputs,), float(task.pos_weight))
        return nn.BCEWithLogitsLoss(pos_weight=w)
    if task.loss == "huber":
        return nn.HuberLoss(delta=1.0)  # on the standardised target: quadratic within one standard deviation
    return nn.MSELoss()


# ---------------------------------------------------------------- scores -> submitted values

def decide(task: Task, scores: np.ndarray) -> np.ndarray:
    """The submitted values of scores (after a fitted rule's transform, kit.decision): the class index (argmax),
    0/1 (p >= 0.5) for a binary label, a 0/1 row per label (p >= 0.5), the grade (the nearest, within the range),
    the value clipped to the range."""
    p = np.asarray(scores, dtype=np.float64)
    if task.kind == "multiclass":
        return np.argmax(p, axis=1)
    if task.kind in ("binary", "multilabel"):
        d = (p >= 0.5).astype(np.int64)
        return d[:, 0] if task.kind == "binary" else d
    v = p[:, 0]
    if task.kind == "ordinal":
        return np.clip(np.floor(v + 0.5), task.low, task.high).astype(np.int64)
    lo = -np.inf if task.low is None else task.low
    hi = np.inf if task.high is None else task.high
    return np.clip(v, lo, hi)


def label_values(task: Task, scores: np.ndarray) -> list:
    """The label format's cells, one list per value column: [class names] for multiclass, [tags joined by the
    separator] for tags, one list of 0/1 per label for label columns, [0/1], [grades] or [values] otherwise."""
    d = decide(task, scores)
    if task.kind == "multiclass":
        names = np.asarray(task.outputs, dtype=object)[d]
        if task.columns:  # one 0/1 column per class
            return [list((d == k).astype(int)) for k in range(len(task.outputs))]
        return [list(names)]
    if task.kind == "multilabel":
        if task.columns:
            return [list(d[:, k]) for k in range(d.shape[1])]
        return [[task.tag_separator.join(task.outputs[k] for k in np.flatnonzero(row)) for row in d]]
    if task.names:  # a binary target of two names
        return [list(np.asarray(task.names, dtype=object)[d])]
    return [list(d)]


def proba_values(task: Task, scores: np.ndarray) -> list:
    """The proba format's cells, one list per value column: each class's or label's probability, P(1), or the
    value (ordinal and regression: clipped to the range, as submitted)."""
    p = np.asarray(scores, dtype=np.float64)
    if task.kind in ("ordinal", "regression"):
        lo = -np.inf if task.low is None else task.low
        hi = np.inf if task.high is None else task.high
        return [list(np.clip(p[:, 0], lo, hi))]
    return [list(p[:, k]) for k in range(p.shape[1])]


def value_columns_needed(task: Task, fmt: str) -> Optional[tuple]:
    """The value columns a submission of this format must name (the outputs), or None for one column of any
    name (the sample's)."""
    if task.kind in ("multiclass", "multilabel") and (fmt == "proba" or task.columns):
        return task.outputs
    return None


def check_label_values(task: Task, values) -> list:
    """The cells of a one-column label submission that are not valid values of this task (for check_submission)."""
    vals = [str(v) for v in values]
    if task.kind == "multiclass":
        known = set(task.outputs)
        return [v for v in vals if v not in known]
    if task.kind == "multilabel":
        known = set(task.outputs)
        return [v for v in vals if any(t not in known for t in v.split(task.tag_separator) if t)]
    if task.names:
        return [v for v in vals if v not in task.names]
    bad = []
    for v in vals:
        try:
            x = float(v)
        except ValueError:
            bad.append(v)
            continue
        if not np.isfinite(x) or (task.kind == "binary" and x not in (0.0, 1.0)) or \
                (task.kind == "ordinal" and (x != round(x) or not task.low <= x <= task.high)):
            bad.append(v)
    return bad

