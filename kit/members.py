"""Members of a run: the planned grid seeds x backbones x folds (kit.plan), each trained independently, each
predicting its out-of-fold and test images with every TTA mode of its plan.

    ctx = prepare_run(recipe)          # data loaded and checked, plan made (or reloaded), run directory written
    for member in ctx.plan.members:
        train_member(ctx, member)      # nothing here resolves `auto`, applies an override or builds a data config
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kit import metrics as M
from kit.errors import RecipeError, RunDirError
from kit.plan import PLAN_FILE, MemberPlan, RunPlan, plan_run, save_plan
from kit.predictions import Predictions, load_predictions, save_predictions
from kit.recipe import Recipe, recipe_hash
from kit.rundir import member_dir, pred_path, read_json, write_json_atomic, write_text_atomic

@dataclass
class RunContext:
    plan: RunPlan
    run_dir: Path
    sources: object  # kit.data.Sources (bad images already dropped under data.bad_images: skip)
    folds: np.ndarray  # fold of each labelled image (-1: always trains, holdout)
    bad_images: list  # images left out (data.bad_images: skip)

    @property
    def recipe(self) -> Recipe:
        return self.plan.recipe


def select_members(members: list[MemberPlan], spec: str | None) -> list[MemberPlan]:
    """'3', '0-4', '1,5,7' or None (all): what `kit train --member` takes, e.g. from a job array index."""
    if spec is None:
        return list(members)
    chosen = set()
    for part in str(spec).split(","):
        lo, _, hi = part.partition("-")
        try:
            chosen.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise RecipeError(f"--member {spec!r}: use an index, a range like 0-4, or a list like 1,5,7") from None
    bad = sorted(i for i in chosen if i >= len(members))
    if bad:
        raise RecipeError(f"--member {spec!r}: this recipe has members 0..{len(members) - 1}, not {bad}")
    return [m for m in members if m.index in chosen]


def _check_hash(recipe: Recipe) -> None:
    hash_file = recipe.run_dir / "recipe.hash"
    h = recipe_hash(recipe)
    if hash_file.exists() and hash_file.read_text().strip() != h:
        raise RunDirError(f"{recipe.run_dir} holds a run of a different recipe (hash {hash_file.read_text().strip()}, "
                          f"this one {h}); its results are kept: set a new `name:` (or --set name=...) "
                          f"or output_dir, or remove {recipe.run_dir} yourself")


def load_checked_sources(recipe: Recipe):
    """The data of the recipe, every image path inside its root and every image scanned (kit.data.scan):
    (sources, bad images left out under data.bad_images: skip)."""
    from kit.data import load_sources
    from kit.data.scan import apply_bad_images, scan_sources
    sources = load_sources(recipe.data)
    bad = scan_sources(sources)
    return apply_bad_images(sources, bad, recipe.data.bad_images, where=f"the recipe of {recipe.name}"), bad


def prepare_run(recipe: Recipe, *, write: bool = True) -> RunContext:
    """Open the run directory of `recipe`: refuse another recipe's run, load and check the data, make (or reload)
    the plan and the split, and only then write recipe.yaml, recipe.hash, plan.json and folds.csv, so that a
    recipe that fails on its data locks nothing. write=False: open a run another process has just written (the
    ranks of torchrun but the first), writing nothing."""
    from kit.data import load_folds, make_folds, save_folds
    import yaml
    from kit.data import attach_decoded_cache, decoded_max_side
    _check_hash(recipe)
    sources, bad = load_checked_sources(recipe)
    plan = plan_run(recipe, sources)
    # every image decoded once into a memory-mapped store (kit.data.cache), at most the size the plan needs
    sources = attach_decoded_cache(sources, max_side=decoded_max_side(plan))
    run_dir = recipe.run_dir
    folds_file = run_dir / "folds.csv"
    if folds_file.exists():
        ids, _, folds = load_folds(folds_file)
        if list(ids) != list(sources.train.ids):
            raise RunDirError(f"{folds_file} was made for other images than data.* now gives; "
                              f"the data changed under this run: use a new run name")
    elif recipe.distill.teacher:  # a student validates on exactly the teacher's folds (kit.pseudo's rule)
        folds = _teacher_folds(recipe, sources)
    else:
        folds = make_folds(sources.train.labels, recipe.data, classes=sources.train.classes)
    if not write:
        return RunContext(plan, run_dir, sources, np.asarray(folds), bad)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    write_text_atomic(run_dir / "recipe.hash", plan.recipe_hash + "\n")
    if not (run_dir / PLAN_FILE).exists():
        save_plan(plan, run_dir / PLAN_FILE)
    if not folds_file.exists():
        save_folds(folds_file, sources.train.ids, sources.train.labels, folds)
    if bad:
        _write_bad_images(run_dir / "bad_images.csv", bad)
    return RunContext(plan, run_dir, sources, np.asarray(folds), bad)


def _teacher_folds(recipe: Recipe, sources) -> np.ndarray:
    from kit.data import load_folds
    path = Path(recipe.distill.teacher) / "folds.csv"
    if not path.is_file():
        raise RunDirError(f"distill.teacher {recipe.distill.teacher} is not a finished run ({path} is missing)")
    ids, _, folds = load_folds(path)
    if list(ids) != list(sources.train.ids):
        raise RunDirError(f"distill.teacher {recipe.distill.teacher} was trained on other labelled images than "
                          f"data.* gives here; distil with the teacher's data")
    return folds


def _write_bad_images(path: Path, bad: list) -> None:
    import csv
    import io
    from dataclasses import asdict, is_dataclass
    rows = [asdict(b) if is_dataclass(b) else dict(b) for b in bad]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def member_done(run_dir, member: MemberPlan) -> dict | None:
    f = member_dir(run_dir, member.name) / "done.json"
    return read_json(f) if f.exists() else None


def learns_from_teacher(member: MemberPlan) -> bool:
    """A pseudo-label round after the first, or a distilled student: its targets come from kit.pseudo."""
    return member.round > 0 or member.recipe.distill.teacher is not None


def _loaders(ctx: RunContext, member: MemberPlan, device=None, log=None):
    from kit import distributed
    from kit.data import ImageDataset, create_eval_transform, create_train_transform, make_loader
    from kit.data.loader import shard_length
    r, cfg = member.recipe, member.data_config
    refit = member.refit_of is not None  # every labelled image trains, none validates
    train_rows = np.arange(len(ctx.folds)) if refit else np.flatnonzero(ctx.folds != member.fold)
    val_rows = np.array([], dtype=np.int64) if refit else np.flatnonzero(ctx.folds == member.fold)
    table = ctx.sources.train
    transform = create_train_transform(r.augment, cfg)
    if learns_from_teacher(member):  # labelled rows + test images, with target distributions from the teacher
        from kit.pseudo import student_dataset
        dataset = student_dataset(ctx, member, transform, device, log)
    else:
        dataset = ImageDataset(table, train_rows, transform)
    # under torchrun each process loads its share (kit.distributed): batch k of all ranks is the batch k alone
    world = distributed.current()
    shard = (world.rank, world.size) if world else None
    batch = distributed.shard_batch(r.train.batch_size)
    n = shard_length(len(dataset), shard)  # this rank's images an epoch
    mixing = r.train.mixup > 0 or r.train.cutmix > 0  # timm's Mixup pairs the batch: needs an even size
    train = make_loader(dataset, batch, shuffle=True, num_workers=r.data.num_workers, seed=r.train.seed,
                        drop_last=mixing or n % batch == 1, shard=shard)
    if refit:
        return train, None, val_rows
    val = make_loader(ImageDataset(table, val_rows, create_eval_transform(cfg)), batch * 2, shuffle=False,
                      num_workers=r.data.num_workers, seed=r.train.seed, shard=shard)
    return train, val, val_rows


def apply_environment(plan: RunPlan, device) -> None:
    """The plan's thread count (it changes floating-point sums on the CPU): set before any member computes."""
    import torch
    threads = plan.environment.get("threads")
    if device.type == "cpu" and threads and torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))


def train_member(ctx: RunContext, member: MemberPlan, *, resume: bool = True, on_epoch_end=None,
                 progress_factory=None, device=None, log=None) -> dict | None:
    """Train one member (or return its record if it finished before), then predict with every TTA mode.
    Returns None when another process holds the member's lock (it is training it now)."""
    from filelock import FileLock, Timeout
    from kit import distributed
    out = member_dir(ctx.run_dir, member.name)
    lock = None
    if distributed.is_main():  # under torchrun rank 0 holds the lock for all its ranks, and decides for them
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            lock = None
            if log:
                log(f"member {member.name}: being trained by another process (lock {out / '.lock'}); skipped")
    if not distributed.broadcast(lock is not None):  # the other ranks take rank 0's answer
        return None
    try:
        done = distributed.broadcast(member_done(ctx.run_dir, member))
        if done is not None:
            return done
        if distributed.current() is not None:
            _check_distributable(member)
        return _train_member(ctx, member, out, resume, on_epoch_end, progress_factory, device, log)
    finally:
        if lock is not None:
            lock.release()


def _check_distributable(member: MemberPlan) -> None:
    if member.recipe.model.strategy == "feature_extract":
        raise RecipeError(f"member {member.name} extracts features once and trains a head on them: nothing for "
                          f"several processes to share; train it without torchrun (kit train ... --member "
                          f"{member.index})")
    if learns_from_teacher(member):
        raise RecipeError(f"member {member.name} learns from a teacher's predictions (pseudo-labels or "
                          f"distillation), which torchrun does not split yet; train it without torchrun (kit train "
                          f"... --member {member.index})")


def _train_member(ctx, member: MemberPlan, out: Path, resume, on_epoch_end, progress_factory, device, log) -> dict:
    import torch
    from kit import distributed
    from kit.models.backbone import build_model, to_device
    from kit.runtime import describe_device, seed_everything
    from kit.train import fit, load_checkpoint

    r, t0 = member.recipe, time.time()
    device = device or distributed.device(r.train.device)
    apply_environment(ctx.plan, device)
    seed_everything(r.train.seed)  # the new head's weights, dropout and data order follow the member's seed
    table = ctx.sources.train
    model, weights_source = build_model(r.model, len(table.classes), member.pretrained_cfg, seed=r.train.seed)
    if member.depthwise_taps:  # planned on a CPU; on a GPU the converted convolutions are nn.Conv2d's
        from kit.models.depthwise import use_tap_gradients
        use_tap_gradients(model)
    model = to_device(model, device, member.channels_last)
    train_loader, val_loader, val_rows = _loaders(ctx, member, device, log)
    if r.model.strategy == "feature_extract":  # a shallow head on cached embeddings (kit.features)
        from kit.features import fit_feature_member
        model, history = fit_feature_member(ctx, member, model, member.data_config, out, device=device,
                                            channels_last=member.channels_last, on_epoch_end=on_epoch_end)
    else:
        history = fit(model, train_loader, val_loader, table.labels, r.model, _train_spec(ctx, member), out,
                      num_classes=len(table.classes), device=device, channels_last=member.channels_last,
                      resume=resume, on_epoch_end=on_epoch_end, progress_factory=progress_factory, log=log)
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    if not distributed.is_main():  # rank 0 predicts and writes the record; the others take it from disk
        distributed.barrier()
        return read_json(out / "done.json")
    scores = predict_member(ctx, member, model, member.data_config, device, member.channels_last, log=log)
    record = {"member": member.name, "index": member.index, "config": member.config, "seed": member.seed,
              "fold": member.fold, "backbone": r.model.backbone, "strategy": r.model.strategy,
              "weights": weights_source, "best_epoch": history.best_epoch, "metric": r.train.metric,
              "scores": scores, "epochs": len(history.epochs), "wall_time_s": time.time() - t0,
              "device": describe_device(device), "n_val": int(len(val_rows)),
              "environment": {"channels_last": member.channels_last, "threads": torch.get_num_threads(),
                              "depthwise_taps": member.depthwise_taps and device.type == "cpu"},
              "refit_of": member.refit_of}
    world = distributed.current()
    if world is not None:
        record["processes"] = world.size  # torchrun: trained by this many processes together
    write_json_atomic(out / "done.json", record)
    distributed.barrier()
    return record


def _train_spec(ctx: RunContext, member: MemberPlan):
    """The member's train spec; a refit trains for as many epochs as the member it repeats kept (best epoch + 1),
    a number the plan states as that rule and the validated member's done.json settles."""
    if member.refit_of is None:
        return member.recipe.train
    done = read_json(member_dir(ctx.run_dir, member.refit_of) / "done.json") \
        if (member_dir(ctx.run_dir, member.refit_of) / "done.json").exists() else None
    if done is None:
        raise RunDirError(f"member {member.name} refits {member.refit_of} on every labelled image for its chosen "
                          f"number of epochs: train {member.refit_of} first (kit train {ctx.run_dir})")
    return member.recipe.train.model_copy(update={"epochs": int(done["best_epoch"]) + 1, "early_stopping": None})


def tta_transform(member: MemberPlan):
    """The member's prediction transform: shorter side to R, the whole R x R square (R = kit.tta.tta_resize), from
    which kit.tta takes its views. Used by predict_member and kit.inference alike."""
    from kit.data import create_eval_transform
    r = member.tta_side
    return create_eval_transform(member.data_config, resize=r, crop=r)


def tta_kwargs(member: MemberPlan, environment: dict, device) -> dict:
    """kit.tta.predict_modes' arguments for this member (all but the modes), as the plan fixed them."""
    from kit.runtime import resolve_amp
    r = member.recipe
    return dict(merge=r.tta.merge, input_size=member.data_config["input_size"], device=device,
                amp_dtype=resolve_amp(r.train.amp, device), channels_last=member.channels_last,
                max_batch_views=r.tta.max_batch_views, original_weight=r.tta.original_weight,
                scales=tuple(r.tta.scales), cpu_chunk_pixels=environment.get("tta_cpu_chunk_pixels"))


def predict_member(ctx: RunContext, member: MemberPlan, model, cfg, device, channels_last, modes=None,
                   log=None) -> dict:
    """Validation (out-of-fold) and test probabilities for every TTA mode (default: the member's planned
    modes), saved; returns validation scores per mode."""
    from kit.data import ImageDataset, make_loader
    from kit.tta import predict_modes

    r = member.recipe
    transform = tta_transform(member)
    kwargs = dict(modes=list(modes or member.tta_modes), log=log, **tta_kwargs(member, ctx.plan.environment, device))
    kwargs["channels_last"] = channels_last
    if r.train.compile:
        import torch
        model = torch.compile(model)
    splits = {} if member.refit_of is not None else \
        {"oof": (ctx.sources.train, np.flatnonzero(ctx.folds == member.fold))}
    if ctx.sources.test is not None:
        splits["test"] = (ctx.sources.test, np.arange(len(ctx.sources.test)))
    scores = {}
    for split, (table, rows) in splits.items():
        loader = make_loader(ImageDataset(table, rows, transform), r.train.batch_size * 2, shuffle=False,
                             num_workers=r.data.num_workers, seed=r.train.seed)
        by_mode, idx = predict_modes(model, loader, **kwargs)
        labels = None if table.labels is None else table.labels[idx]
        for mode, probs in by_mode.items():
            pred = Predictions(table.ids[idx], probs, table.classes, labels)
            save_predictions(pred, pred_path(ctx.run_dir, member.name, split, mode))
            if split == "oof":
                scores[mode] = M.score_all(labels, probs)
    return scores


def predict_rows(ctx: RunContext, member: MemberPlan, model, cfg, device, channels_last, table, rows) -> np.ndarray:
    """Probabilities (TTA none) of rows `rows` of `table`, in that order; nothing saved."""
    from kit.data import ImageDataset, create_eval_transform, make_loader
    from kit.runtime import resolve_amp
    from kit.tta import predict_modes
    r = member.recipe
    loader = make_loader(ImageDataset(table, rows, create_eval_transform(cfg)), r.train.batch_size * 2,
                         shuffle=False, num_workers=r.data.num_workers, seed=r.train.seed)
    by_mode, idx = predict_modes(model, loader, ["none"], input_size=cfg["input_size"], device=device,
                                 amp_dtype=resolve_amp(r.train.amp, device), channels_last=channels_last)
    order = {int(row): k for k, row in enumerate(idx)}
    return by_mode["none"][[order[int(row)] for row in rows]]


TTA_NOISE_SE = 2.0  # a mode's lead on the metric counts when over this many paired standard errors


class TTAChoice(NamedTuple):
    mode: str
    why: str  # one line for the run summary


def choose_tta(oofs: dict, metric: str, fixed: str = "auto") -> TTAChoice:
    """The one TTA rule: `fixed` (tta.mode) when set; else, among the modes of `oofs` ({mode: pooled out-of-fold
    Predictions, the same rows}), the best score on the metric, unless other modes are within TTA_NOISE_SE
    paired standard errors of it (kit.metrics.paired_se): then the lowest log loss of those decides. Accuracy on
    a few thousand rows moves by several images between modes that differ by chance; log loss scores every row's
    probabilities, not only its argmax, so it separates them with less noise. `none` is a candidate whenever it
    was predicted, and wins ties (on the metric, and on log loss among the close modes)."""
    if fixed != "auto":
        return TTAChoice(fixed, "tta.mode")
    modes = sorted(oofs, key=lambda m: m != "none")  # none first, the others in their order
    ref = oofs[modes[0]]
    oofs = {m: oofs[m].reorder(ref.ids) for m in modes}
    y = ref.labels
    score = {m: M.score(metric, y, oofs[m].probs) for m in modes}
    best = modes[0]
    for m in modes[1:]:
        if M.better(metric, score[m], score[best]):
            best = m
    if len(modes) == 1:
        return TTAChoice(best, "the only mode predicted")
    close = [m for m in modes if m == best or abs(score[best] - score[m])
             <= TTA_NOISE_SE * M.paired_se(metric, y, oofs[best].probs, oofs[m].probs)]
    if len(close) == 1 or metric == "log_loss":
        return TTAChoice(best, f"best out-of-fold {metric}, by more than {TTA_NOISE_SE:g} paired standard errors"
                         if len(close) == 1 else f"best out-of-fold {metric}")
    loss = {m: M.score("log_loss", y, oofs[m].probs) for m in close}
    pick = min(close, key=lambda m: loss[m])  # the first of equals: none
    return TTAChoice(pick, f"{metric} of {', '.join(close)} within {TTA_NOISE_SE:g} paired standard errors of the "
                           f"best ({best}): lowest log loss of those ({loss[pick]:.4f})")


def config_oofs(run_dir, members: list[MemberPlan], done: dict) -> dict:
    """{mode: pooled out-of-fold Predictions} of one configuration, for every mode all its members predicted."""
    return {mode: config_predictions(run_dir, members, mode, need_test=False)[0]
            for mode in available_modes(run_dir, members, done)}


def available_modes(run_dir, members: list[MemberPlan], done: dict) -> list[str]:
    """Modes every one of these members has predicted (planned, or added later by `kit predict --tta`)."""
    modes = [m for m in dict.fromkeys(k for d in done.values() for k in d["scores"])]
    return [m for m in modes if all(m in done[x.name]["scores"] and
                                    pred_path(run_dir, x.name, "oof", m).exists() for x in members)]


def config_predictions(run_dir, members: list[MemberPlan], tta: str, *, need_test: bool = True,
                       refits: list[MemberPlan] = ()) -> tuple[Predictions, Predictions | None]:
    """Out-of-fold predictions of one configuration (its fold models' validation rows put together: each
    labelled image once) and its test predictions (the fold models' probabilities averaged, or those of the
    members `refits` trained on every labelled image when data.refit made them)."""
    oofs = [load_predictions(pred_path(run_dir, m.name, "oof", tta)) for m in members]
    oof = Predictions(np.concatenate([p.ids for p in oofs]), np.concatenate([p.probs for p in oofs]),
                      oofs[0].classes, np.concatenate([p.labels for p in oofs]))
    if not need_test:
        return oof, None
    test_members = list(refits) or members
    test_files = [pred_path(run_dir, m.name, "test", tta) for m in test_members]
    missing = [(m, f) for m, f in zip(test_members, test_files) if not f.exists()]
    if missing:
        m, f = missing[0]
        raise RunDirError(f"member {m.name} has no test predictions for TTA mode {tta} ({f} is missing); "
                          f"predict them again with: kit predict {run_dir} --tta {tta}")
    tests = [load_predictions(f) for f in test_files]
    test = Predictions(tests[0].ids, np.mean([t.reorder(tests[0].ids).probs for t in tests], axis=0),
                       tests[0].classes)
    return oof, test


def load_member_model(ctx: RunContext, member: MemberPlan, device):
    """A finished member's best weights in its planned architecture (no pretrained download: the weights are
    ours): (model, data config, channels_last)."""
    from kit.features import restore_member_model
    from kit.models.backbone import build_model, to_device
    from kit.train import load_checkpoint
    model, _ = build_model(member.recipe.model, len(ctx.sources.train.classes), member.pretrained_cfg,
                           load_weights=False)
    model = restore_member_model(model, member.recipe.model, member_dir(ctx.run_dir, member.name))
    model.load_state_dict(load_checkpoint(member_dir(ctx.run_dir, member.name) / "best.pt")["model"])
    return to_device(model, device, member.channels_last), member.data_config, member.channels_last


def repredict_member(ctx: RunContext, member: MemberPlan, modes: list[str], device) -> dict:
    """Predict a finished member with (more) TTA modes and add their scores to its record."""
    done = member_done(ctx.run_dir, member)
    if done is None:
        raise RunDirError(f"member {member.name} has not finished training; train it first with "
                          f"kit train {ctx.run_dir} --member {member.index}")
    apply_environment(ctx.plan, device)
    model, cfg, channels_last = load_member_model(ctx, member, device)
    done["scores"].update(predict_member(ctx, member, model, cfg, device, channels_last, modes=modes))
    write_json_atomic(member_dir(ctx.run_dir, member.name) / "done.json", done)
    return done
