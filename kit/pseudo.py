"""Training targets taken from a finished round of members: pseudo-labels on the test images and distillation.

The leakage rule, for both: the member validated on fold k learns only from teachers that never trained on
fold k's images, i.e. the teachers' own fold-k members (trained on the other folds). Their test predictions, at
each configuration's chosen TTA mode, are blended with the chosen method, exactly as the submission is, but per
fold: fold k's blend uses fold k's models only. Pseudo-labelled test images are only ever added to training
rows; validation rows stay the labelled images of fold k, so no validation score includes a pseudo-label.

    teacher = load_teacher(run_dir_or_ctx)                 # plan, blend report, chosen modes
    probs = fold_blend(teacher, fold=k, split="test")      # Predictions of the test images
    rows, targets = select_pseudo(probs, spec)             # confident rows and their target distributions
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import RunDirError
from kit.predictions import Predictions, load_predictions
from kit.rundir import pred_path


@dataclass(frozen=True)
class Teacher:
    run_dir: Path
    configs: dict  # config name -> {fold: member name}
    tta: dict  # config name -> chosen TTA mode
    method: object  # kit.ensemble.MethodResult of the chosen blend, or None for a single configuration
    order: list  # configuration names in the blend's member order
    classes: tuple


def load_teacher(run_dir, plan, summary_configs=None) -> Teacher:
    """The blend a finished run (or round) chose: ensemble/report.json (method, weights or stacker, TTA per
    configuration) and the plan's fold members. `summary_configs` (kit.run.ConfigResult) stands in for the
    report of a single-configuration run, which blends nothing."""
    from kit.ensemble import MethodResult
    run_dir = Path(run_dir)
    members = {}
    for m in plan.members:
        members.setdefault(m.config, {})[m.fold] = m.name
    report_file = run_dir / "ensemble" / "report.json"
    if report_file.exists():
        report = json.loads(report_file.read_text())
        res = report["methods"][report["chosen"]]
        method = MethodResult(report["chosen"], np.asarray(res["weights"]), res["oof_score"], res["nested_score"],
                              res.get("params"))
        order, tta = report["members"], report.get("tta", {})
    elif summary_configs:
        method, order = None, [summary_configs[0].config]
        tta = {c.config: c.tta for c in summary_configs}
    else:
        raise RunDirError(f"{run_dir} has no blend yet (ensemble/report.json): finish it first with "
                          f"kit submit {run_dir}")
    missing = [c for c in order if c not in members]
    if missing:
        raise RunDirError(f"{report_file} blends configurations {missing} that the plan of {run_dir} does not have")
    classes = tuple(plan.data["classes"])
    return Teacher(run_dir, {c: members[c] for c in order}, {c: tta.get(c, "none") for c in order}, method, order,
                   classes)


def fold_blend(teacher: Teacher, fold: int, split: str = "test") -> tuple[Predictions, list[str]]:
    """The chosen blend of the teachers' fold-`fold` members on `split`, and the members it came from."""
    from kit.ensemble import apply_method
    preds, sources = [], []
    for config in teacher.order:
        name = teacher.configs[config].get(fold)
        if name is None:
            raise RunDirError(f"teacher {teacher.run_dir} has no fold {fold} member of {config}; a student must "
                              f"use the teacher's folds")
        path = pred_path(teacher.run_dir, name, split, teacher.tta[config])
        if not path.exists():
            raise RunDirError(f"{path} is missing: teacher member {name} has no {split} predictions at its TTA "
                              f"mode; run kit predict {teacher.run_dir} --tta {teacher.tta[config]}")
        preds.append(load_predictions(path))
        sources.append(name)
    ids = preds[0].ids
    probs = [p.reorder(ids).probs for p in preds]
    blended = probs[0] if teacher.method is None else apply_method(probs, teacher.method)
    return Predictions(ids, blended, teacher.classes), sources


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T) renormalised: T > 1 spreads a teacher's probability over the classes it confuses."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def one_hot(labels, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return out


def select_pseudo(pred: Predictions, *, threshold: float | None, top_fraction: float | None, soft: bool,
                  temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `pred` kept, their target distributions [n, C]). Kept: top probability >= threshold, or the
    `top_fraction` most confident rows of each predicted class (so that rare classes keep some pseudo-labels).
    Targets: the softened blend (soft) or its one-hot argmax (hard)."""
    probs = pred.probs
    conf, label = probs.max(axis=1), probs.argmax(axis=1)
    if top_fraction is not None:
        keep = []
        for c in np.unique(label):
            rows = np.flatnonzero(label == c)
            k = max(1, int(round(top_fraction * len(rows))))
            keep.extend(rows[np.argsort(-conf[rows], kind="stable")[:k]])
        rows = np.sort(np.asarray(keep, dtype=np.int64))
    else:
        rows = np.flatnonzero(conf >= (threshold if threshold is not None else 0.0))
    targets = soften(probs[rows], temperature) if soft else one_hot(label[rows], probs.shape[1])
    return rows, targets


def mixed_targets(labels, teacher_probs: np.ndarray, alpha: float, temperature: float) -> np.ndarray:
    """Distillation targets of labelled rows: alpha x the one-hot label + (1 - alpha) x the softened teacher.
    Cross-entropy is linear in its target, so this is alpha x hard loss + (1 - alpha) x soft loss."""
    n_classes = teacher_probs.shape[1]
    return (alpha * one_hot(labels, n_classes) + (1 - alpha) * soften(teacher_probs, temperature)).astype(np.float32)
