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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.context import load_run_recipe, prepare_run
from kit.errors import RunDirError
from kit.member_predict import load_member_model, predict_rows
from kit.predictions import Predictions, load_predictions
from kit.report import REPORT_FILE, read_report
from kit.rundir import pred_path, round_dir  # noqa: F401 (round_dir: kit.pseudo.round_dir)


@dataclass(frozen=True)
class Teacher:
    run_dir: Path
    configs: dict  # config name -> {fold: member name}
    tta: dict  # config name -> chosen TTA mode
    method: object  # kit.ensemble.MethodResult of the chosen blend, or None for a single configuration
    order: list  # configuration names in the blend's member order
    classes: tuple
    temperatures: list | None = None  # ensemble.temperature: each configuration's, applied before the blend

    def combine(self, probs: list) -> np.ndarray:
        """The configurations' probabilities (in `order`) blended as the run's submission was: each tempered by
        its temperature where the blend was fitted on tempered probabilities, then the chosen method."""
        from kit.ensemble import apply_method, apply_temperature
        if self.temperatures is not None:
            probs = [apply_temperature(p, t) for p, t in zip(probs, self.temperatures)]
        return probs[0] if self.method is None else apply_method(probs, self.method)


def load_teacher(run_dir, plan, report_dir=None) -> Teacher:
    """The blend a finished run (or round) chose: <report_dir>/report.json (default run_dir/ensemble: the method,
    its weights or stacker, temperatures, the TTA mode of each configuration; kit.report) and the plan's fold
    members."""
    run_dir = Path(run_dir)
    members = {}
    for m in plan.members:
        members.setdefault(m.config, {})[m.fold] = m.name
    report_file = Path(report_dir or run_dir / "ensemble") / REPORT_FILE
    report = read_report(report_file, f"{run_dir} has no blend yet: finish it first with kit submit {run_dir}")
    order = report.members
    missing = [c for c in order if c not in members]
    if missing:
        raise RunDirError(f"{report_file} blends configurations {missing} that the plan of {run_dir} does not have")
    classes = tuple(plan.data["classes"])
    return Teacher(run_dir, {c: members[c] for c in order}, {c: report.tta.get(c, "none") for c in order},
                   report.method(), order, classes, report.temperatures)


def fold_blend(teacher: Teacher, fold: int, split: str = "test") -> tuple[Predictions, list[str]]:
    """The chosen blend of the teachers' fold-`fold` members on `split`, and the members it came from."""
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
    return Predictions(ids, teacher.combine(probs), teacher.classes), sources


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


# ---------------------------------------------------------------- a student member's training rows

class TargetDataset:
    """Parts (ImageDataset, targets [n, C] float32, row offset) as one training set whose items are
    (image, target distribution, row + offset). Indexed like ImageDataset (an int or a kit.data.loader.Draw),
    so that each sample's augmentation is seeded the same way; `indices` are the rows the sampler seeds from."""

    def __init__(self, parts):
        self.parts = parts
        self.indices = np.concatenate([ds.indices + offset for ds, _, offset in parts])
        self._starts = np.cumsum([0] + [len(ds) for ds, _, _ in parts])
        self.transform = parts[0][0].transform

    def __len__(self) -> int:
        return int(self._starts[-1])

    def seed_augmentation(self, seed: int) -> None:
        for ds, _, _ in self.parts:
            ds.seed_augmentation(seed)

    def __getitem__(self, i):
        import torch
        from kit.data.loader import Draw
        position, seed = (i.position, i.seed) if isinstance(i, Draw) else (int(i), None)
        p = int(np.searchsorted(self._starts, position, side="right") - 1)
        ds, targets, offset = self.parts[p]
        j = position - int(self._starts[p])
        item = ds[Draw(j, seed)] if seed is not None else ds[j]
        if not (isinstance(item, tuple) and len(item) == 3 and not hasattr(item, "error")):
            return item  # a failure carried from a worker (kit.data.loader), raised by the loader as it was
        image, _, row = item
        return image, torch.from_numpy(np.ascontiguousarray(targets[j])), row + offset


def teacher_of(ctx, member):
    """(Teacher, kind): the previous round of this run for a pseudo-label round, or the distill.teacher run."""
    from kit.plan import load_plan
    if member.round > 0:
        from kit.plan import RunPlan
        prev = [m for m in ctx.plan.members if m.round == member.round - 1]
        sub = RunPlan(ctx.plan.recipe, ctx.plan.recipe_hash, tuple(prev), ctx.plan.folds, ctx.plan.environment,
                      ctx.plan.data)
        return load_teacher(ctx.run_dir, sub, round_dir(ctx.run_dir, member.round - 1)), "pseudo"
    teacher_dir = Path(member.recipe.distill.teacher)
    return load_teacher(teacher_dir, load_plan(teacher_dir / "plan.json")), "distill"


def student_dataset(ctx, member, transform, device, log=None):
    """The training set of a pseudo-label round's or a distilled member: its labelled training rows, plus test
    images with targets from the teacher's fold-`member.fold` blend. Writes members/<name>/targets.json."""
    from kit.data import ImageDataset
    from kit.rundir import member_dir, write_json_atomic
    teacher, kind = teacher_of(ctx, member)
    train, test = ctx.sources.train, ctx.sources.test
    n_classes = len(train.classes)
    train_rows = np.flatnonzero(ctx.folds != member.fold)
    info = {"kind": kind, "teacher": str(teacher.run_dir), "fold": member.fold}
    if kind == "distill":
        d = member.recipe.distill
        probs, info["train_teachers"] = teacher_train_probs(ctx, teacher, member.fold, train_rows, device)
        labelled = mixed_targets(train.labels[train_rows], probs, d.alpha, d.temperature)
    else:
        labelled = one_hot(train.labels[train_rows], n_classes)
    parts = [(ImageDataset(train, train_rows, transform), labelled, 0)]
    if test is not None and (kind == "pseudo" or member.recipe.distill.test_images):
        pred, info["test_teachers"] = fold_blend(teacher, member.fold, "test")
        pred = pred.reorder(test.ids)
        if kind == "pseudo":
            p = member.recipe.pseudo
            rows, targets = select_pseudo(pred, threshold=p.threshold, top_fraction=p.top_fraction, soft=p.soft,
                                          temperature=p.temperature)
        else:
            rows, targets = np.arange(len(test)), soften(pred.probs, member.recipe.distill.temperature)
        parts.append((ImageDataset(test, rows, transform), targets, len(train)))
        info["test_images"] = int(len(rows))
    write_json_atomic(member_dir(ctx.run_dir, member.name) / "targets.json", info)
    if log:
        log(f"  {kind} targets from {teacher.run_dir}: {info.get('test_images', 0)} test images join "
            f"{len(train_rows)} labelled ones")
    return TargetDataset(parts)


def teacher_train_probs(ctx, teacher: Teacher, fold: int, rows, device) -> tuple[np.ndarray, list[str]]:
    """The teacher's fold-`fold` blend on labelled rows `rows` of ctx.sources.train (plain views: TTA none).
    Those models trained on these rows and never on fold `fold`, which validates the student."""
    tctx = prepare_run(load_run_recipe(teacher.run_dir))
    if list(tctx.sources.train.ids) != list(ctx.sources.train.ids):
        raise RunDirError(f"teacher {teacher.run_dir} was trained on other labelled images than this run; a "
                          f"student must use the teacher's data")
    by_name = {m.name: m for m in tctx.plan.members}
    probs, names = [], []
    for config in teacher.order:
        m = by_name[teacher.configs[config][fold]]
        model, cfg, channels_last = load_member_model(tctx, m, device)
        probs.append(predict_rows(tctx, m, model, cfg, device, channels_last, ctx.sources.train, rows))
        names.append(m.name)
    return teacher.combine(probs), names


def distill_recipe(teacher_dir, backbone: str, overrides=(), name: str | None = None):
    """The recipe of a student of the finished run `teacher_dir`: the teacher's own recipe (same data, folds,
    augmentation, training schedule) with model.backbone = `backbone` (its weights `auto`), one seed, no
    backbones grid, distill.teacher set; then `overrides` (--set). `kit distill RUN --into BACKBONE` runs it."""
    from kit.recipe import EnsembleSpec, ModelSpec, PseudoSpec
    teacher_dir = Path(teacher_dir).resolve()
    t = load_run_recipe(teacher_dir)
    over = {"name": name or f"{t.name}-distill-{backbone.replace('/', '_')}",
            "model": ModelSpec(backbone=backbone, weights="auto",
                               strategy="full" if t.model.strategy in ("auto", "feature_extract") else t.model.strategy,
                               channels_last=t.model.channels_last).model_dump(),
            "ensemble": EnsembleSpec(seeds=t.seeds[:1], methods=list(t.ensemble.methods)).model_dump(),
            "pseudo": PseudoSpec().model_dump(), "distill.teacher": str(teacher_dir)}
    student = t.with_overrides(over, source=f"kit distill {teacher_dir} --into {backbone}")
    return student.with_overrides(list(overrides), source="--set") if overrides else student
