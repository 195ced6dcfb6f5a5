"""Members of a run: the grid seeds x backbones x folds, each trained independently, each predicting its
out-of-fold and test images with every TTA mode of the recipe."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import metrics as M
from kit.predictions import Predictions, load_predictions, save_predictions
from kit.recipe import Recipe, RecipeError, recipe_from_dict, recipe_hash, set_path
from kit.rundir import member_dir, pred_path, read_json, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Member:
    index: int
    name: str  # "<backbone>-s<seed>-f<fold>"
    config: str  # "<backbone>-s<seed>": the fold models of one configuration share it
    recipe: Recipe  # the run's recipe with this backbone's overrides and train.seed = seed
    backbone_index: int
    seed: int
    fold: int


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    sources: object  # kit.data.Sources
    folds: np.ndarray  # fold of each labelled image (-1: always trains, holdout)


def expand_members(recipe: Recipe, folds: list[int]) -> list[Member]:
    """seeds x backbones x folds, backbone-major, so the fold models of one configuration are neighbours."""
    backbones = recipe.ensemble.backbones or [{}]
    names = []
    for b, over in enumerate(backbones):
        name = over.get("model", {}).get("backbone", recipe.model.backbone)
        names.append(name if [o.get("model", {}).get("backbone", recipe.model.backbone)
                              for o in backbones].count(name) == 1 else f"{name}.{b}")
    members = []
    for b, over in enumerate(backbones):
        raw = recipe.to_dict()
        for section, values in over.items():
            for k, v in values.items():
                raw = set_path(raw, f"{section}.{k}", v)
        for seed in recipe.seeds:
            r = recipe_from_dict(set_path(raw, "train.seed", seed), source=f"ensemble.backbones[{b}]")
            for fold in folds:
                config = f"{names[b]}-s{seed}"
                members.append(Member(len(members), f"{config}-f{fold}", config, r, b, seed, fold))
    return members


def select_members(members: list[Member], spec: str | None) -> list[Member]:
    """'3', '0-4', '1,5,7' or None (all): what `kit train --member` takes, e.g. from a job array index."""
    if spec is None:
        return members
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


def prepare_run(recipe: Recipe) -> RunContext:
    """Create (or reopen) the run directory: resolved recipe, hash, data sources and the saved split."""
    from kit.data import load_folds, load_sources, make_folds, save_folds
    import yaml

    run_dir = recipe.run_dir
    h = recipe_hash(recipe)
    hash_file = run_dir / "recipe.hash"
    if hash_file.exists() and hash_file.read_text().strip() != h:
        raise RecipeError(f"{run_dir} holds a run of a different recipe (hash {hash_file.read_text().strip()}, "
                          f"this one {h}); its results are kept: set a new `name:` (or --set name=...) "
                          f"or output_dir, or remove {run_dir} yourself")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    write_text_atomic(hash_file, h + "\n")
    sources = load_sources(recipe.data)
    folds_file = run_dir / "folds.csv"
    if folds_file.exists():
        ids, _, folds = load_folds(folds_file)
        if list(ids) != list(sources.train.ids):
            raise RecipeError(f"{folds_file} was made for other images than data.* now gives; "
                              f"the data changed under this run: use a new run name")
    else:
        folds = make_folds(sources.train.labels, recipe.data)
        save_folds(folds_file, sources.train.ids, sources.train.labels, folds)
    return RunContext(recipe, run_dir, sources, np.asarray(folds))


def member_done(run_dir, member: Member) -> dict | None:
    f = member_dir(run_dir, member.name) / "done.json"
    return read_json(f) if f.exists() else None


def _loaders(ctx: RunContext, member: Member, cfg: dict):
    from kit.data import ImageDataset, create_eval_transform, create_train_transform, make_loader
    r = member.recipe
    train_rows = np.flatnonzero(ctx.folds != member.fold)
    val_rows = np.flatnonzero(ctx.folds == member.fold)
    table = ctx.sources.train
    mixing = r.train.mixup > 0 or r.train.cutmix > 0  # timm's Mixup pairs the batch: needs an even size
    train = make_loader(ImageDataset(table, train_rows, create_train_transform(r.augment, cfg)),
                        r.train.batch_size, shuffle=True, num_workers=r.data.num_workers, seed=r.train.seed,
                        drop_last=mixing or len(train_rows) % r.train.batch_size == 1)
    val = make_loader(ImageDataset(table, val_rows, create_eval_transform(cfg)), r.train.batch_size * 2,
                      shuffle=False, num_workers=r.data.num_workers, seed=r.train.seed)
    return train, val, train_rows, val_rows


def train_member(ctx: RunContext, member: Member, *, resume: bool = True, on_epoch_end=None,
                 progress_factory=None, device=None) -> dict:
    """Train one member (or return its record if it finished before), then predict with every TTA mode."""
    import torch
    from kit.models.backbone import create_model, to_device
    from kit.runtime import describe_device, resolve_device, seed_everything, use_channels_last
    from kit.train import fit

    if member.recipe.model.strategy == "auto":  # measured once per data set and backbone (kit.advise), cached
        from kit.advise import resolve_auto
        member = dataclasses.replace(member, recipe=resolve_auto(member.recipe))
    done = member_done(ctx.run_dir, member)
    if done is not None:
        return done
    r, t0 = member.recipe, time.time()
    out = member_dir(ctx.run_dir, member.name)
    seed_everything(r.train.seed)  # the new head's weights, dropout and data order follow the member's seed
    table = ctx.sources.train
    model, weights_source = create_model(r.model, len(table.classes))
    device = device or resolve_device(r.train.device)
    from kit.data import resolve_data_config
    from kit.models.backbone import data_config_override
    cfg = resolve_data_config(model, r.augment, data_config_override(r.model))
    channels_last = use_channels_last(r.model.channels_last, model, cfg["input_size"], device)
    model = to_device(model, device, channels_last)
    train_loader, val_loader, _, val_rows = _loaders(ctx, member, cfg)
    if r.model.strategy == "feature_extract":  # a shallow head on cached embeddings (kit.features)
        from kit.features import fit_feature_member
        model, history = fit_feature_member(ctx, member, model, cfg, out, device=device,
                                            channels_last=channels_last, on_epoch_end=on_epoch_end)
    else:
        history = fit(model, train_loader, val_loader, table.labels, r.model, r.train, out,
                      num_classes=len(table.classes), device=device, channels_last=channels_last,
                      resume=resume, on_epoch_end=on_epoch_end, progress_factory=progress_factory)
    model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True)["model"])
    scores = predict_member(ctx, member, model, cfg, device, channels_last)
    record = {"member": member.name, "index": member.index, "config": member.config, "seed": member.seed,
              "fold": member.fold, "backbone": r.model.backbone, "strategy": r.model.strategy,
              "weights": weights_source, "best_epoch": history.best_epoch, "metric": r.train.metric,
              "scores": scores, "epochs": len(history.epochs), "wall_time_s": time.time() - t0,
              "device": describe_device(device), "n_val": int(len(val_rows))}
    write_json_atomic(out / "done.json", record)
    return record


def predict_member(ctx: RunContext, member: Member, model, cfg, device, channels_last) -> dict:
    """Validation (out-of-fold) and test probabilities for every TTA mode, saved; returns val scores per mode."""
    from kit.data import ImageDataset, create_eval_transform, make_loader
    from kit.runtime import resolve_amp
    from kit.tta import predict_modes, tta_resize

    r = member.recipe
    R = tta_resize(cfg["input_size"], cfg["crop_pct"], r.tta.resize)
    transform = create_eval_transform(cfg, resize=R, crop=R)
    kwargs = dict(modes=list(r.tta.modes), merge=r.tta.merge, input_size=cfg["input_size"], device=device,
                  amp_dtype=resolve_amp(r.train.amp, device), channels_last=channels_last,
                  max_batch_views=r.tta.max_batch_views, original_weight=r.tta.original_weight,
                  scales=tuple(r.tta.scales))
    splits = {"oof": (ctx.sources.train, np.flatnonzero(ctx.folds == member.fold))}
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


def chosen_tta(recipe: Recipe, records: list[dict]) -> str:
    """tta.mode, or with `auto` the mode whose mean validation score over these members is best
    (`none` wins ties and whenever TTA hurts)."""
    if recipe.tta.mode != "auto":
        return recipe.tta.mode
    metric = recipe.train.metric
    modes = list(dict.fromkeys(["none"] + list(recipe.tta.modes)))
    modes = [m for m in modes if all(m in rec["scores"] for rec in records)]
    mean = {m: float(np.mean([rec["scores"][m][metric] for rec in records])) for m in modes}
    best = modes[0]
    for m in modes[1:]:
        if M.better(metric, mean[m], mean[best]):
            best = m
    return best


def config_predictions(run_dir, members: list[Member], tta: str) -> tuple[Predictions, Predictions | None]:
    """Out-of-fold predictions of one configuration (its fold models' validation rows put together: each
    labelled image once) and its test predictions (the fold models' probabilities averaged)."""
    oofs = [load_predictions(pred_path(run_dir, m.name, "oof", tta)) for m in members]
    oof = Predictions(np.concatenate([p.ids for p in oofs]), np.concatenate([p.probs for p in oofs]),
                      oofs[0].classes, np.concatenate([p.labels for p in oofs]))
    test_files = [pred_path(run_dir, m.name, "test", tta) for m in members]
    test = None
    if all(f.exists() for f in test_files):
        tests = [load_predictions(f) for f in test_files]
        test = Predictions(tests[0].ids, np.mean([t.reorder(tests[0].ids).probs for t in tests], axis=0),
                           tests[0].classes)
    return oof, test


def load_member_model(ctx: RunContext, member: Member, device):
    """A finished member's best weights in its architecture (no pretrained download: the weights are ours)."""
    import torch
    from kit.data import resolve_data_config
    from kit.models.backbone import create_model, data_config_override, to_device
    from kit.runtime import use_channels_last
    from kit.advise import resolve_auto
    from kit.features import restore_member_model
    member = dataclasses.replace(member, recipe=resolve_auto(member.recipe))
    spec = member.recipe.model.model_copy(update={"weights": "none"})
    model, _ = create_model(spec, len(ctx.sources.train.classes))
    model = restore_member_model(model, spec, member_dir(ctx.run_dir, member.name))
    state = torch.load(member_dir(ctx.run_dir, member.name) / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    cfg = resolve_data_config(model, member.recipe.augment, data_config_override(member.recipe.model))
    channels_last = use_channels_last(spec.channels_last, model, cfg["input_size"], device)
    model = to_device(model, device, channels_last)
    return model, cfg, channels_last


def repredict_member(ctx: RunContext, member: Member, modes: list[str], device) -> dict:
    """Predict a finished member with (more) TTA modes and add their scores to its record."""
    done = member_done(ctx.run_dir, member)
    if done is None:
        raise RecipeError(f"member {member.name} has not finished training; run kit train first")
    r = member.recipe
    member = Member(member.index, member.name, member.config,
                    r.model_copy(update={"tta": r.tta.model_copy(update={"modes": modes})}),
                    member.backbone_index, member.seed, member.fold)
    model, cfg, channels_last = load_member_model(ctx, member, device)
    done["scores"].update(predict_member(ctx, member, model, cfg, device, channels_last))
    write_json_atomic(member_dir(ctx.run_dir, member.name) / "done.json", done)
    return done
