"""The shallow heads of kit.features: torch linear / MLP heads trained on embeddings by kit.train.fit (the one
training loop), scikit-learn logistic regression / SVM pipelines (SklearnHead), calibration, installing a head
into a model and restoring a member's saved model.

Calibration. Every head's probabilities are fitted against log loss on training rows only, never on the
validation fold: the scikit-learn heads get standardised inputs and C chosen by inner cross-validation on the
training rows (log loss over model.head_c x C_GRID: model.head_c is the centre of the search, not a fixed
value), the one-vs-rest SVMs' scores go through Platt scaling (CalibratedClassifierCV, sigmoid), and a torch
head's logits are divided by one temperature fitted on training images held out of its training
(fit_temperature). All heads standardise the embeddings the same way (embedding_scale).

Files. Nothing a head saves can run code when read back: torch heads and logistic regression live in best.pt
as tensors (logreg is exactly one nn.Linear, logreg_as_linear); the SVM pipeline is a skops file (HEAD_FILE),
loaded with an explicit list of trusted types.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit.errors import RecipeError, UnsafeFileError
from kit.recipe import ModelSpec, TrainSpec

HEAD_FILE = "head.skops"  # the fitted scikit-learn pipeline of an svm member, next to best.pt
LEGACY_HEAD_FILE = "head.pkl"  # what kit wrote before: a pickle, never read
MISSING_LOGIT = -1e4  # logreg: a class absent from the training rows gets probability exp(-1e4) = 0
EVAL_BATCH = 4096  # embedding rows per forward pass when scoring (memory only: results do not depend on it)
C_GRID = (0.1, 1.0, 10.0)  # logreg / svm: C searched = model.head_c x these
INNER_FOLDS = 3  # inner cross-validation on the training rows for C (fewer when a class has fewer images)
TEMPERATURE_BOUNDS = (0.05, 20.0)  # torch heads: logits / T, T searched in this range
# torch heads: this share of the training images is held out of training to fit the temperature (stratified);
# of ~1,150 training images (digits, one fold of five) that is 172 images, ~17 per class
CALIBRATION_FRACTION = 0.15
# the scikit-learn types of an svm head that skops does not trust by default; anything else in a head file
# (a function, os.system, an unknown class) is refused before anything in it is built
SKLEARN_TRUSTED = ("sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration")


# ---------------------------------------------------------------- standardisation

def embedding_scale(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale) of training embeddings, for z = (x - mean) / scale, the inputs of every head.
    scale = sqrt(std^2 + s^2), s the features' mean std, rather than std: many pooled features are (nearly)
    constant on the training rows (ReLU6 units that never fire: 141 of efficientnet_lite0's 1,280 on digits at
    96 px) yet not on new images, and dividing by their ~0 std turned a value of 0.24 into z = 240,000: logits
    of thousands (a linear head at 0.91 accuracy had a log loss of 1.07) and an RBF kernel of ~0 for such
    images (SVM at 0.82). With the floor s no validation z exceeds 13 there, and a feature's weight in the
    RBF distance is at most 1/s^2."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    return mean, np.sqrt(std ** 2 + max(float(std.mean()), 1e-12) ** 2)


# ---------------------------------------------------------------- torch heads

def create_head(spec: ModelSpec, num_features: int, num_classes: int) -> nn.Module:
    """model.head linear: one nn.Linear; mlp: Linear(D, head_hidden), GELU, Dropout(drop_rate), Linear(., C).
    The output layer starts small (std 0.01, as kit.models.backbone.init_head)."""
    from kit.models.backbone import init_head
    if spec.head == "linear":
        head = out = nn.Linear(num_features, num_classes)
    elif spec.head == "mlp":
        out = nn.Linear(spec.head_hidden, num_classes)
        head = nn.Sequential(nn.Linear(num_features, spec.head_hidden), nn.GELU(), nn.Dropout(spec.drop_rate), out)
    else:
        raise ValueError(f"model.head={spec.head!r} is not a torch head; torch heads: linear, mlp")
    init_head(out)
    return head


def embedding_loader(x, y, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False):
    """(embeddings, labels, row) batches from a TensorDataset: the batch contract of kit's image loaders, so that
    kit.train.fit trains a head as it trains a model. The order is a function of `seed`; fit reseeds
    `loader.generator` every epoch, which is also the sampler's."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y = np.asarray(y)  # class indices, or float targets (kit.task.train_targets)
    y = y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64)
    dataset = TensorDataset(x, torch.as_tensor(y), torch.arange(len(x)))
    generator = torch.Generator().manual_seed(int(seed))
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    # whole batches indexed at once: one gather per batch instead of batch_size lookups and a collate
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      generator=generator)


@torch.inference_mode()
def head_proba(head: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> np.ndarray:
    head.eval()
    return torch.cat([torch.softmax(head(x[i:i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)]
                     ).cpu().numpy()


def _linears(head: nn.Module) -> list[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def fit_torch_head(head: nn.Module, x_train, y_train, x_val, y_val, spec: TrainSpec, out_dir, *,
                   model_spec: ModelSpec | None = None, device="cpu", resume: bool = False, on_epoch_end=None,
                   task=None):
    """Train `head` on standardised embeddings with kit.train.fit (the recipe's optimiser, schedule, label
    smoothing, mixup, EMA, early stopping on train.metric), its checkpoints in `out_dir`. The head ends with its
    best epoch's weights, taking raw embeddings; returns the kit.train.History."""
    from kit.train import fit, load_checkpoint
    device = torch.device(device)
    x = torch.as_tensor(np.asarray(x_train, dtype=np.float32))
    # Standardised inputs (embedding_scale), as the scikit-learn heads get: pooled features have scales that
    # differ by backbone (and by layer, with cut_at), which an lr tuned for one would not fit. Folded into the
    # first layer at the end.
    mean, std = (torch.as_tensor(a, dtype=torch.float32) for a in embedding_scale(x_train))
    x_val = (torch.as_tensor(np.asarray(x_val, dtype=np.float32)) - mean) / std
    # cutmix pastes image rectangles (an embedding has none); AMP saves nothing on a head and costs calibration
    spec = spec.model_copy(update={"cutmix": 0.0, "amp": "off"})
    train = embedding_loader((x - mean) / std, y_train, spec.batch_size, shuffle=True, seed=spec.seed,
                             drop_last=spec.mixup > 0 and len(x) > spec.batch_size)  # timm's Mixup pairs the batch
    val = embedding_loader(x_val, y_val, EVAL_BATCH, shuffle=False, seed=spec.seed)
    head.to(device)
    history = fit(head, train, val, np.asarray(y_val) if task is not None else np.asarray(y_val, dtype=np.int64),
                  model_spec or ModelSpec(strategy="feature_extract"), spec, out_dir, task=task,
                  num_classes=_linears(head)[-1].out_features, device=device, channels_last=False,
                  resume=resume, on_epoch_end=on_epoch_end)
    head.load_state_dict(load_checkpoint(Path(out_dir) / "best.pt")["model"])
    _fold_standardisation(head, mean.to(device), std.to(device))
    return history


@torch.no_grad()
def _fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """W (x - mean) / std + b = (W / std) x + (b - (W / std) mean): the head then takes raw embeddings."""
    first = _linears(head)[0]
    first.weight.div_(std)
    first.bias.sub_(first.weight @ mean)


def calibration_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of (training, calibration) among `labels`: CALIBRATION_FRACTION held out, stratified and
    seeded; no calibration rows when too few images (fewer than 2 per class) to hold any out."""
    from sklearn.model_selection import train_test_split
    positions = np.arange(len(labels))
    counts = np.bincount(labels)[np.unique(labels)]
    n_cal = int(round(len(labels) * CALIBRATION_FRACTION))
    if counts.min() < 2 or n_cal < len(counts) or len(labels) - n_cal < len(counts):
        return positions, positions[:0]
    fit, cal = train_test_split(positions, test_size=n_cal, stratify=labels, random_state=seed)
    return np.sort(fit), np.sort(cal)


@torch.no_grad()
def fit_temperature(head: nn.Module, x, y) -> float:
    """The temperature T > 0 whose softmax(logits / T) has the lowest log loss on (x, y), folded into the head's
    output layer (W / T, b / T: predictions unchanged, probabilities calibrated). 1.0 when x is empty."""
    from scipy.optimize import minimize_scalar
    if len(x) == 0:
        return 1.0
    device = _linears(head)[-1].weight.device
    head.eval()
    logits = head(torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)).double().cpu()
    target = torch.as_tensor(np.asarray(y, dtype=np.int64))

    def loss(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), target))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    t = math.exp(minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}).x)
    out = _linears(head)[-1]
    out.weight.div_(t)
    out.bias.div_(t)
    return t


# ---------------------------------------------------------------- scikit-learn heads

def _inner_splits(y: np.ndarray, groups: np.ndarray, seed: int) -> list | None:
    """Stratified folds of the training rows that keep an image's views together (groups); None when a class
    has fewer than 2 images."""
    from sklearn.model_selection import StratifiedGroupKFold
    per_class = [len(np.unique(groups[y == k])) for k in np.unique(y)]
    folds = min(INNER_FOLDS, min(per_class))
    if folds < 2:
        return None
    return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def _fit_pipeline(kind: str, c: float, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int):
    """A fitted Pipeline: a StandardScaler holding embedding_scale's (mean, scale), then LogisticRegression(C=c)
    or one RBF SVC(C=c) per class (one-vs-rest) whose scores are Platt-scaled on out-of-fold rows
    (CalibratedClassifierCV, sigmoid). One-vs-rest, not SVC's own one-vs-one: its 'ovr' scores are vote counts,
    which a sigmoid calibrates poorly (digits: log loss 0.63 against 0.31, same C and accuracy);
    SVC(probability=True) is deprecated in scikit-learn 1.9."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    if kind == "logreg":
        estimator = LogisticRegression(C=c, max_iter=2000)
    elif kind == "svm":
        splits = _inner_splits(y, groups, seed)
        if splits is None:
            raise RecipeError("model.head=svm calibrates its probabilities by cross-validation: every class needs "
                              "at least 2 training images; use model.head=logreg (or linear) for this data")
        estimator = CalibratedClassifierCV(OneVsRestClassifier(SVC(C=c)), cv=splits, ensemble=False)
    else:
        raise ValueError(f"model.head={kind!r} is not a scikit-learn head; those are: logreg, svm")
    scaler = StandardScaler().fit(x)
    scaler.mean_, scaler.scale_ = embedding_scale(x)  # the floored scale (transform divides by scale_)
    estimator.fit(scaler.transform(x).astype(np.float32), y)
    return make_pipeline(scaler, estimator)


def choose_c(kind: str, center: float, x, y, groups=None, seed: int = 0) -> tuple[float, dict]:
    """The C of center x C_GRID with the lowest out-of-fold log loss in an inner cross-validation of the
    training rows (ties: the smaller C), and {C: log loss}. `center` alone when the rows are too few to split."""
    from sklearn.metrics import log_loss
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    splits = _inner_splits(y, groups, seed)
    if splits is None or kind == "svm" and any(_inner_splits(y[tr], groups[tr], seed) is None for tr, _ in splits):
        return center, {}
    labels = np.unique(y)
    losses = {}
    for c in (center * f for f in C_GRID):
        probs = np.zeros((len(y), len(labels)))
        for tr, te in splits:
            pipe = _fit_pipeline(kind, c, x[tr], y[tr], groups[tr], seed)
            probs[np.ix_(te, np.searchsorted(labels, pipe.classes_))] = pipe.predict_proba(x[te])
        probs = np.clip(probs, 1e-15, 1)  # float32 rows sum to 1 only within ~1e-7: sklearn warns
        losses[c] = float(log_loss(y, probs / probs.sum(1, keepdims=True), labels=labels))
    return min(losses, key=losses.get), losses


def fit_sklearn_head(kind: str, c: float, x_train, y_train, *, groups=None, seed: int = 0, search: bool = True):
    """A fitted scikit-learn Pipeline (see _fit_pipeline) on all training rows, with C = choose_c(kind, c, ...)
    (search=False: C = c). `groups`: the image of each row, when an image's views are several rows."""
    x, y = np.asarray(x_train, dtype=np.float32), np.asarray(y_train, dtype=np.int64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    chosen = choose_c(kind, c, x, y, groups, seed)[0] if search else c
    return _fit_pipeline(kind, chosen, x, y, groups, seed)


def fitted_c(pipeline) -> float:
    """The C a fitted head pipeline uses (its classifier's, however deeply wrapped)."""
    params = pipeline[-1].get_params()
    return float(next(v for k, v in params.items() if k == "C" or k.endswith("__C")))


def sklearn_proba(pipeline, x, num_classes: int) -> np.ndarray:
    """predict_proba with one column per class of the competition (classes unseen in training get 0)."""
    probs = np.zeros((len(x), num_classes), dtype=np.float32)
    probs[:, pipeline.classes_] = pipeline.predict_proba(np.asarray(x, dtype=np.float32))
    return probs


def logreg_as_linear(pipeline, num_classes: int) -> nn.Linear:
    """The scaler + logistic regression as one nn.Linear whose softmax is predict_proba (exact):
    coef (x - mean) / scale + b = (coef / scale) x + (b - coef . mean / scale)."""
    scaler, lr = pipeline[0], pipeline[-1]
    coef = lr.coef_ / scaler.scale_
    bias = lr.intercept_ - coef @ scaler.mean_
    if len(lr.classes_) == 2:  # binary: P(second class) = sigmoid(z) = softmax([0, z])[1]
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = np.zeros((num_classes, coef.shape[1]))
    full_bias = np.full(num_classes, MISSING_LOGIT)
    weight[lr.classes_], full_bias[lr.classes_] = coef, bias
    linear = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(full_bias))
    return linear


def fit_linear_head(task, c: float, x, y) -> nn.Linear:
    """A task's scikit-learn head as one nn.Linear on raw embeddings (standardised inside, as the classifiers'):
    one logistic regression per label (binary, multilabel: logits, which the task's sigmoid reads), or a ridge
    regression (alpha 1 / c) of the standardised grade or value (kit.task.train_targets, which activate maps back).
    A label with one value in the training rows gets a constant logit of +-20."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from kit.task import train_targets
    x = np.asarray(x, dtype=np.float64)
    mean, scale = embedding_scale(x)
    xs = (x - mean) / scale
    if task.loss == "bce":  # 0/1 columns
        labels = np.asarray(y).reshape(len(x), -1)
        coef, bias = np.zeros((labels.shape[1], x.shape[1])), np.zeros(labels.shape[1])
        for k in range(labels.shape[1]):
            col = labels[:, k]
            if col.min() == col.max():
                bias[k] = 20.0 if col[0] else -20.0
                continue
            lr = LogisticRegression(C=c, max_iter=2000).fit(xs, col)
            coef[k], bias[k] = lr.coef_[0], lr.intercept_[0]
    else:
        ridge = Ridge(alpha=1.0 / c).fit(xs, train_targets(task, y)[:, 0])
        coef, bias = ridge.coef_[None, :], np.array([ridge.intercept_])
    weight = coef / scale
    linear = nn.Linear(x.shape[1], len(bias))
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias - weight @ mean))
    return linear


def save_sklearn_head(pipeline, path) -> Path:
    import skops.io as sio
    from kit.rundir import write_bytes_atomic
    return write_bytes_atomic(path, sio.dumps(pipeline))


def load_sklearn_head(path):
    """The pipeline in a skops head file. Only skops' default trusted types (scikit-learn estimators, numpy
    arrays) and SKLEARN_TRUSTED are built; a file with anything else, or a corrupt one, is refused naming it."""
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    fix = f"delete {Path(path).parent} to retrain that member"
    data = Path(path).read_bytes()
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as e:  # a pickle, a truncated zip, a bad schema: never unpickled
        raise UnsafeFileError(f"{path} is not a skops file of a scikit-learn head (it is corrupt, or another "
                              f"format such as a pickle; {type(e).__name__}: {str(e)[:160]}); {fix}") from None
    refused = [t for t in untrusted if t not in SKLEARN_TRUSTED]
    if refused:
        raise UnsafeFileError(f"{path} holds types kit does not load ({', '.join(refused[:5])}): objects that "
                              f"could run code when loaded; kit loads only scikit-learn heads: {fix}")
    try:
        pipeline = sio.loads(data, trusted=list(SKLEARN_TRUSTED))
    except Exception as e:
        raise UnsafeFileError(f"{path} is corrupt ({type(e).__name__}: {str(e)[:160]}); {fix}") from None
    if not isinstance(pipeline, Pipeline):
        raise UnsafeFileError(f"{path} holds a {type(pipeline).__name__}, not a scikit-learn Pipeline; {fix}")
    return pipeline


class SklearnHead(nn.Module):
    """A fitted scikit-learn pipeline as the classifier: returns log-probabilities as the logits, so the softmax
    that TTA and the ensembles apply gives its predict_proba back. Not in the state dict: saved as HEAD_FILE."""

    def __init__(self, pipeline, num_classes: int):
        super().__init__()
        self.pipeline = pipeline
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sklearn_proba(self.pipeline, x.detach().float().cpu().numpy(), self.num_classes)
        return torch.from_numpy(np.log(np.maximum(probs, 1e-8))).to(x.device)


# ---------------------------------------------------------------- members

def install_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the model's classifier is (model.fc, model.classifier, model.head, ...)."""
    current = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is current)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, head)
    return model


def restore_member_model(model: nn.Module, spec: ModelSpec, member_dir) -> nn.Module:
    """The architecture a feature_extract member was saved in (cut backbone, MLP or SVM head), built around the
    model kit.models.backbone.build_model(spec, C) returns, so that best.pt loads into it. Other strategies:
    the model as it is."""
    from kit.models.backbone import CutBackbone
    if spec.strategy != "feature_extract":
        return model
    classifier = model.get_classifier()
    num_classes = classifier.out_features
    if spec.cut_at is not None and not isinstance(model, CutBackbone):
        model = CutBackbone(model, spec.cut_at, num_classes, spec.drop_rate)
    if spec.head == "mlp":
        install_head(model, create_head(spec, model.get_classifier().in_features, num_classes))
    elif spec.head == "svm":
        path, legacy = Path(member_dir) / HEAD_FILE, Path(member_dir) / LEGACY_HEAD_FILE
        if not path.exists() and legacy.exists():
            raise UnsafeFileError(f"{legacy} is a pickle written by an older kit (it could run code when loaded); "
                                  f"kit no longer reads pickles: delete {Path(member_dir)} to retrain that member")
        install_head(model, SklearnHead(load_sklearn_head(path), num_classes))  # written by fit_feature_member
    return model
