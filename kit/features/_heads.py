"""The shallow heads of kit.features: torch linear / MLP heads trained on embeddings, scikit-learn logistic
regression / SVM pipelines (SklearnHead), installing a head into a model and restoring a member's saved model."""
from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit import metrics as M
from kit.recipe import ModelSpec, RecipeError, TrainSpec

HEAD_FILE = "head.pkl"  # the fitted scikit-learn pipeline of a logreg / svm member, next to best.pt
MISSING_LOGIT = -1e4  # logreg: a class absent from the training rows gets probability exp(-1e4) = 0


# ---------------------------------------------------------------- heads

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


def train_epoch(head: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn, batch_size: int,
                generator: torch.Generator, scheduler=None, first_update: int = 0) -> float:
    """One pass over the embeddings in a random order (mini-batches); returns the mean training loss."""
    head.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total = 0.0
    for i, start in enumerate(range(0, len(x), batch_size)):
        idx = order[start:start + batch_size]
        loss = loss_fn(head(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            scheduler.step()
        elif scheduler is not None:
            scheduler.step_update(first_update + i + 1)
        total += loss.item() * len(idx)
    return total / len(x)


@torch.inference_mode()
def head_proba(head: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    head.eval()
    return torch.cat([torch.softmax(head(x[i:i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)]
                     ).cpu().numpy()


def fit_torch_head(head: nn.Module, x_train, y_train, x_val, y_val, spec: TrainSpec, *, device="cpu",
                   on_epoch_end=None):
    """Mini-batch training on standardised embeddings with the recipe's optimiser, schedule and label smoothing;
    validation every epoch, early stopping on train.metric (patience train.early_stopping). The head ends with
    its best epoch's weights, taking raw embeddings; returns the kit.train.History."""
    from kit.train import create_optimizer, create_schedule
    from kit.train import History

    device = torch.device(device)
    x = torch.as_tensor(np.asarray(x_train, dtype=np.float32), device=device)
    # Standardised inputs, as the scikit-learn heads get: pooled features have scales that differ by backbone
    # (and by layer, with cut_at), which an lr tuned for one would not fit. Folded into the first layer at the end.
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=device)
    xv = (torch.as_tensor(np.asarray(x_val, dtype=np.float32), device=device) - mean) / std
    y_val = np.asarray(y_val, dtype=np.int64)
    head.to(device)
    optimizer = create_optimizer(head, spec)
    updates = math.ceil(len(x) / spec.batch_size)
    scheduler = create_schedule(optimizer, spec, updates)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    generator = torch.Generator().manual_seed(spec.seed)
    history, best, patience = History(), None, spec.early_stopping or 0
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        loss = train_epoch(head, x, y, optimizer, loss_fn, spec.batch_size, generator, scheduler, epoch * updates)
        scores = M.score_all(y_val, head_proba(head, xv))
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in scores.items()},
               "lr": max(g["lr"] for g in optimizer.param_groups), "train_images_per_s": len(x) / seconds,
               "seconds": seconds}
        history.epochs.append(row)
        score = scores[spec.metric]
        if math.isnan(score):
            raise FloatingPointError(f"validation {spec.metric} is NaN at epoch {epoch}; "
                                     f"lower train.lr (now {spec.lr})")
        if best is None or M.better(spec.metric, score, history.best_score):
            history.best_epoch, history.best_score = epoch, score
            best = {k: v.detach().clone() for k, v in head.state_dict().items()}
            patience = spec.early_stopping or 0
        elif spec.early_stopping:
            patience -= 1
            history.stopped_early = patience <= 0
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if history.stopped_early:
            break
    head.load_state_dict(best)
    _fold_standardisation(head, mean, std)
    return history


@torch.no_grad()
def _fold_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """W (x - mean) / std + b = (W / std) x + (b - (W / std) mean): the head then takes raw embeddings."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    first.weight.div_(std)
    first.bias.sub_(first.weight @ mean)


def fit_sklearn_head(kind: str, c: float, x_train, y_train):
    """StandardScaler, then LogisticRegression(C=c) or an RBF SVC(C=c) with probabilities calibrated by
    cross-validation (CalibratedClassifierCV, sigmoid; SVC(probability=True) is deprecated in scikit-learn 1.9):
    a fitted scikit-learn Pipeline."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    y_train = np.asarray(y_train, dtype=np.int64)
    if kind == "logreg":
        estimator = LogisticRegression(C=c, max_iter=2000)
    elif kind == "svm":
        counts = np.bincount(y_train)
        folds = int(min(5, counts[counts > 0].min()))
        if folds < 2:
            raise RecipeError("model.head=svm calibrates its probabilities by cross-validation: every class needs "
                              "at least 2 training images; use model.head=logreg (or linear) for this data")
        estimator = CalibratedClassifierCV(SVC(C=c), cv=folds, ensemble=False)
    else:
        raise ValueError(f"model.head={kind!r} is not a scikit-learn head; those are: logreg, svm")
    return make_pipeline(StandardScaler(), estimator).fit(np.asarray(x_train, dtype=np.float32), y_train)


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


class SklearnHead(nn.Module):
    """A fitted scikit-learn pipeline as the classifier: returns log-probabilities as the logits, so the softmax
    that TTA and the ensembles apply gives its predict_proba back. Not in the state dict: saved as head.pkl."""

    def __init__(self, pipeline, num_classes: int):
        super().__init__()
        self.pipeline = pipeline
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sklearn_proba(self.pipeline, x.detach().float().cpu().numpy(), self.num_classes)
        return torch.from_numpy(np.log(np.maximum(probs, 1e-8))).to(x.device)


def install_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the model's classifier is (model.fc, model.classifier, model.head, ...)."""
    current = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is current)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, head)
    return model


def restore_member_model(model: nn.Module, spec: ModelSpec, member_dir) -> nn.Module:
    """The architecture a feature_extract member was saved in (cut backbone, MLP or SVM head), built around the
    model kit.models.backbone.create_model(spec, C) returns, so that best.pt loads into it. Other strategies:
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
        with open(Path(member_dir) / HEAD_FILE, "rb") as f:
            install_head(model, SklearnHead(pickle.load(f), num_classes))  # written by fit_feature_member
    return model
