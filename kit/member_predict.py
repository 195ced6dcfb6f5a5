"""A member's predictions: its out-of-fold and test probabilities for every TTA mode of its plan, plain
probabilities of chosen rows (a teacher's), its model rebuilt from its own weights, and the transforms all of these
(and kit.inference) use.

Every prediction of a member, validation included, sees an image resized to the member's tta_side R (tta.resize,
or S / crop_pct); the plain view and validation take the centre S x S of it, TTA's views are cut from the R x R
square. So the `none` out-of-fold predictions are exactly the validation's.
"""
from __future__ import annotations

import numpy as np

from kit import metrics as M
from kit.context import RunContext, member_done
from kit.errors import RunDirError
from kit.plan import MemberPlan, RunPlan
from kit.predictions import Predictions, save_predictions
from kit.rundir import member_dir, pred_path, write_json_if_changed


def apply_environment(plan: RunPlan, device) -> None:
    """The plan's thread count (it changes floating-point sums on the CPU): set before any member computes."""
    import torch
    threads = plan.environment.get("threads")
    if device.type == "cpu" and threads and torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))


def eval_transform(member: MemberPlan):
    """The member's plain view: shorter side to R = member.tta_side, centre S x S: validation, predict_rows and
    TTA's `none` see the same pixels."""
    from kit.data import create_eval_transform
    return create_eval_transform(member.data_config, resize=member.tta_side)


def tta_transform(member: MemberPlan):
    """The member's prediction transform: shorter side to R, the whole R x R square (R = kit.tta.tta_resize), from
    which kit.tta takes its views. Used by predict_member and kit.inference alike."""
    from kit.data import create_eval_transform
    r = member.tta_side
    return create_eval_transform(member.data_config, resize=r, crop=r)


def tta_kwargs(member: MemberPlan, environment: dict, device, task) -> dict:
    """kit.tta.predict_modes' arguments for this member (all but the modes), as the plan fixed them."""
    from kit.runtime import resolve_amp
    r = member.recipe
    return dict(merge=r.tta.merge, task=task, input_size=member.data_config["input_size"], device=device,
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
    kwargs = dict(modes=list(modes or member.tta_modes), log=log, **tta_kwargs(member, ctx.plan.environment, device, ctx.task))
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
                scores[mode] = M.score_all(labels, probs, ctx.task.metrics)
    return scores


def predict_rows(ctx: RunContext, member: MemberPlan, model, cfg, device, channels_last, table, rows) -> np.ndarray:
    """Probabilities (TTA none) of rows `rows` of `table`, in that order; nothing saved."""
    from kit.data import ImageDataset, make_loader
    from kit.runtime import resolve_amp
    from kit.tta import predict_modes
    r = member.recipe
    loader = make_loader(ImageDataset(table, rows, eval_transform(member)), r.train.batch_size * 2,
                         shuffle=False, num_workers=r.data.num_workers, seed=r.train.seed)
    by_mode, idx = predict_modes(model, loader, ["none"], input_size=cfg["input_size"], device=device,
                                 amp_dtype=resolve_amp(r.train.amp, device), channels_last=channels_last,
                                 task=ctx.task)
    order = {int(row): k for k, row in enumerate(idx)}
    return by_mode["none"][[order[int(row)] for row in rows]]


def load_member_model(ctx: RunContext, member: MemberPlan, device):
    """A finished member's best weights in its planned architecture (no pretrained download: the weights are
    ours): (model, data config, channels_last)."""
    from kit.features import restore_member_model
    from kit.models.backbone import build_model, to_device
    from kit.train import load_checkpoint
    model, _ = build_model(member.recipe.model, ctx.task.n_outputs, member.pretrained_cfg,
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
    write_json_if_changed(member_dir(ctx.run_dir, member.name) / "done.json", done)  # nothing new: nothing written
    return done
