"""Training one member of a run: its loaders (labelled rows, or a teacher's targets: kit.pseudo), the training
loop (kit.train.fit) or a head on cached embeddings (kit.features), then its predictions (kit.member_predict) and
its done.json record. One process trains a member at a time (a file lock), also across machines.

    for member in ctx.plan.members:
        train_member(ctx, member)      # nothing here resolves `auto`, applies an override or builds a data config
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kit.context import RunContext, learns_from_teacher, member_done, read_done
from kit.errors import RecipeError, RunDirError
from kit.member_predict import apply_environment, eval_transform, predict_member
from kit.plan import MemberPlan
from kit.rundir import member_dir, write_json_atomic


def _loaders(ctx: RunContext, member: MemberPlan, device=None, log=None):
    from kit import distributed
    from kit.data import ImageDataset, create_train_transform, make_loader
    from kit.data.loader import shard_length
    from kit.task import train_targets
    r, cfg = member.recipe, member.data_config
    refit = member.refit_of is not None  # every labelled image trains, none validates
    train_rows = np.arange(len(ctx.folds)) if refit else np.flatnonzero(ctx.folds != member.fold)
    val_rows = np.array([], dtype=np.int64) if refit else np.flatnonzero(ctx.folds == member.fold)
    table = ctx.sources.train
    transform = create_train_transform(r.augment, cfg)
    if learns_from_teacher(member):  # labelled rows + test images, with target distributions from the teacher
        from kit.pseudo import student_dataset  # torch-free at import, but heavy: only for students
        dataset = student_dataset(ctx, member, transform, device, log)
    else:
        dataset = ImageDataset(table, train_rows, transform, targets=train_targets(ctx.task, table.labels))
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
    val = make_loader(ImageDataset(table, val_rows, eval_transform(member)), batch * 2, shuffle=False,
                      num_workers=r.data.num_workers, seed=r.train.seed, shard=shard)
    return train, val, val_rows


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
    model, weights_source = build_model(r.model, ctx.task.n_outputs, member.pretrained_cfg, seed=r.train.seed)
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
                      task=ctx.task, device=device, channels_last=member.channels_last,
                      resume=resume, on_epoch_end=on_epoch_end, progress_factory=progress_factory, log=log)
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    if not distributed.is_main():  # rank 0 predicts and writes the record; the others take it from disk
        distributed.barrier()
        return read_done(out / "done.json", member.name)
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
    done = next((member_done(ctx.run_dir, m) for m in ctx.plan.members if m.name == member.refit_of), None)
    if done is None:
        raise RunDirError(f"member {member.name} refits {member.refit_of} on every labelled image for its chosen "
                          f"number of epochs: train {member.refit_of} first (kit train {ctx.run_dir})")
    return member.recipe.train.model_copy(update={"epochs": int(done["best_epoch"]) + 1, "early_stopping": None})


