"""kit.inference's Ensemble: configurations of fold models, their TTA modes and the blend, predicting images as
kit.member_predict.predict_member predicts a run's own."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kit import metrics as M
from kit.errors import RecipeError, RunDirError
from kit.inference._images import prepare_images
from kit.plan import MemberPlan, RunPlan
from kit.recipe import TTA_MODES

# Configurations weighing less than this in the chosen blend are left out (not predicted, not exported): their share
# of any probability is below 1e-6, under what a float32 submission shows. The leaderboard counts ensemble sizes so.
WEIGHT_EPS = 1e-6
# Images in the timing pass before a prediction (after one warm-up image). On the CPU a pass holds up to 4 x 224^2
# pixels (kit.tta.CPU_CHUNK_PIXELS): 16 images fill it at 112 px; with 8, the quickstart's 64 px lite0 was timed
# ~1.5x slower per image than it then predicted 360 test images
TIMING_IMAGES = 16
# A rank blend's values move in steps of 1 / (images predicted together): below 100 images, steps of over 1%
RANK_MIN_IMAGES = 100


@dataclass(frozen=True)
class Config:
    """One configuration "<backbone>-s<seed>" of the blend: its fold models, its TTA mode and its weight."""
    name: str
    tta: str
    weight: float
    score: float | None  # pooled out-of-fold score (the run's metric) at `tta`; None after a TTA override
    members: tuple  # MemberPlan of each model it predicts with: its fold models, or its refits (data.refit)
    temperature: float | None = None  # ensemble.temperature: fitted on the pooled out-of-fold rows


@dataclass(frozen=True)
class Blend:
    method: str | None  # None: one configuration, which is the prediction as it is
    oof_score: float | None = None
    nested_score: float | None = None
    params: dict | None = None  # stack: the second-level model (kit.ensemble.MethodResult.params)
    rule: dict | None = None  # the decision rule fitted out of fold (kit.decision), applied to the blend's scores


class Ensemble:
    """What a run chose, ready to predict. Made by kit.load (a run directory or a bundle); `select` and `with_tta`
    return changed copies that share the models already built."""

    def __init__(self, source, kind, plan: RunPlan, classes, configs, blend: Blend, weights_files: dict,
                 versions: dict, left_out=(), keep=None):
        self.source, self.kind, self.plan, self.recipe = Path(source), kind, plan, plan.recipe
        self.classes = tuple(classes)
        self.configs, self.blend = tuple(configs), blend
        self.weights_files = weights_files  # member name -> its weights file (best.pt or model.safetensors)
        self.versions, self.left_out = dict(versions), tuple(left_out)
        self.environment = dict(plan.environment)  # the plan's numerics choices (threads, TTA's CPU chunk size)
        self._keep = keep  # a bundle's extracted zip (TemporaryDirectory): removed with the last copy
        self._models: dict = {}

    @property
    def members(self) -> list[str]:
        """The configurations predicted (names "<backbone>-s<seed>", as in ensemble/report.json)."""
        return [c.name for c in self.configs]

    @property
    def metric(self) -> str:
        return self.recipe.train.metric

    @property
    def task(self):
        """What the run's target is (kit.task.Task): the columns predict returns and what predict_labels decides."""
        return self.plan.task

    def __repr__(self) -> str:
        method = self.blend.method or "one configuration"
        configs = ", ".join(f"{c.name} ({c.tta})" for c in self.configs)
        return (f"<kit Ensemble {self.source} ({self.kind}): {method} of {configs}; "
                f"{sum(len(c.members) for c in self.configs)} model(s); classes {', '.join(self.classes)}>")

    def summary(self) -> pd.DataFrame:
        """A row per configuration: backbone, fold models, TTA mode, blend weight, validation score."""
        rows = [{"configuration": c.name, "backbone": c.members[0].recipe.model.backbone, "models": len(c.members),
                 "tta": c.tta, "weight": c.weight, f"val_{self.metric}": c.score} for c in self.configs]
        df = pd.DataFrame(rows).set_index("configuration")
        df.attrs.update(method=self.blend.method, oof_score=self.blend.oof_score,
                        nested_score=self.blend.nested_score, source=str(self.source), left_out=list(self.left_out))
        return df

    def _copy(self, **changes) -> "Ensemble":
        new = Ensemble(self.source, self.kind, self.plan, self.classes, changes.get("configs", self.configs),
                       changes.get("blend", self.blend), self.weights_files, self.versions, self.left_out, self._keep)
        new._models = self._models
        return new

    def select(self, k: int) -> "Ensemble":
        """The k configurations weighing most in the blend (ties: the better validation score), weights
        re-normalised; k = 1 is that configuration alone, as in a run with one configuration."""
        n = len(self.configs)
        if k < 1:
            raise RecipeError(f"--members {k}: keep at least 1 of the {n} configurations")
        if k >= n:
            return self
        if self.blend.method == "stack":
            raise RecipeError(f"--members {k}: this run blends with 'stack', a model fitted on all {n} "
                              f"configurations' probabilities together, which cannot drop any; predict with all "
                              f"{n}, or blend the run with another method (ensemble.choose)")
        sign = 1 if M.get_metric(self.metric).higher_is_better else -1
        ranked = sorted(range(n), key=lambda i: (-self.configs[i].weight, -sign * (self.configs[i].score or 0), i))
        kept = [self.configs[i] for i in sorted(ranked[:k])]
        if k == 1:
            return self._copy(configs=[replace(kept[0], weight=1.0, temperature=None)], blend=Blend(None))
        # (a rule fitted on the whole blend's scores does not apply to a part of it: the default rule decides)
        total = sum(c.weight for c in kept)
        return self._copy(configs=[replace(c, weight=c.weight / total) for c in kept], blend=replace(self.blend, rule=None))

    def with_tta(self, mode: str) -> "Ensemble":
        """Every configuration predicted at TTA mode `mode` instead of its chosen one."""
        if mode not in TTA_MODES:
            raise RecipeError(f"--tta {mode!r} is not a TTA mode; valid: {', '.join(TTA_MODES)}")
        return self._copy(configs=[c if c.tta == mode else replace(c, tta=mode, score=None) for c in self.configs],
                          blend=replace(self.blend, rule=None))  # a rule fitted on other scores does not apply

    # ------------------------------------------------------------ predicting

    def predict(self, images, ids=None, *, batch_size: int | None = None, device=None, num_workers: int | None = None,
                progress=None) -> pd.DataFrame:
        """The task's scores of `images` (paths, a folder, PIL images, HxWx3 uint8 arrays, or a table from
        prepare_images): a DataFrame indexed by `ids` (a folder: its file ids; else positions) with a column per
        class or label (probabilities), or one column (P(1) of a 0/1, a grade, a value), the run's fitted decision
        rule applied (kit.decision). Bad image files raise one ImageReadError naming them all.
        progress(done, total)."""
        table, named = prepare_images(images, ids, self.classes, self.recipe.data.image_suffix)
        probs = self.predict_table(table, batch_size=batch_size, device=device, num_workers=num_workers,
                                   progress=progress)
        index = pd.Index(table.ids, name="id") if named else pd.RangeIndex(len(table))
        return pd.DataFrame(probs, index=index, columns=list(self.classes))

    def predict_labels(self, images, ids=None, **kwargs) -> pd.Series | pd.DataFrame:
        """What a submission's label format holds for each image (same arguments as predict): the class name, 0/1,
        the tags, the grade, the value clipped to its range (kit.task.label_values); a DataFrame of 0/1 columns
        where the target came as one column per label."""
        from kit.task import label_values
        probs = self.predict(images, ids, **kwargs)
        cells = label_values(self.task, probs.to_numpy())
        if len(cells) == 1:
            return pd.Series(cells[0], index=probs.index, name=self.recipe.data.label_column, dtype=object)
        return pd.DataFrame({c: v for c, v in zip(self.task.outputs, cells)}, index=probs.index)

    def predict_table(self, table, *, batch_size=None, device=None, num_workers=None, progress=None) -> np.ndarray:
        """The blend's scores [N, K] float32 of an ImageTable (kit.data.sources), in its row order, the decision
        rule applied."""
        from kit.decision import apply_decision
        return apply_decision(self.blend.rule, self._blend_table(table, batch_size, device, num_workers, progress))

    def _blend_table(self, table, batch_size, device, num_workers, progress) -> np.ndarray:
        from kit import ensemble as E
        per_config = self._config_probs(table, batch_size, device, num_workers, progress)
        if self.blend.method is None:
            return per_config[0]
        if any(c.temperature is not None for c in self.configs):  # float32 in between, as kit.run.blend keeps them
            per_config = [E.apply_temperature(p, c.temperature).astype(np.float32) for p, c in
                          zip(per_config, self.configs)]
        if self.blend.method == "rank" and len(table) < RANK_MIN_IMAGES:
            warnings.warn(f"this run blends by rank, which ranks each class's probabilities among the images "
                          f"predicted together: {len(table)} image(s) here give a coarse blend (one image: uniform "
                          f"probabilities); predict the whole test set in one call, or select(1)", stacklevel=3)
        result = E.MethodResult(self.blend.method, np.array([c.weight for c in self.configs]), np.nan, np.nan,
                                **({"params": self.blend.params} if self.blend.params else {}))
        return E.apply_method(per_config, result, simplex=self.task.softmax).astype(np.float32)

    def time_per_1000(self, *, batch_size=None, device=None, n: int = TIMING_IMAGES) -> float:
        """Seconds per 1,000 images, from a timing pass of `n` synthetic images through every model and the blend
        (after one warm-up image, which also builds the models); decoding files is not included."""
        from kit.data.sources import ImageTable
        side = max(m.tta_side for c in self.configs for m in c.members)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n + 1)]
        table = ImageTable(np.arange(n + 1).astype(str), images, None, self.classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a rank blend's warning about few images: these are not predictions
            self.predict_table(table.subset([0]), batch_size=batch_size, device=device, num_workers=0)
            t0 = time.perf_counter()
            self.predict_table(table.subset(np.arange(1, n + 1)), batch_size=batch_size, device=device, num_workers=0)
        return (time.perf_counter() - t0) / n * 1000

    def device(self, device=None):
        """The torch device predictions run on: `device`, else the run's train.device (auto: CUDA if any)."""
        from kit.runtime import resolve_device
        return resolve_device(str(device) if device is not None else self.recipe.train.device)

    def _config_probs(self, table, batch_size, device, num_workers, progress) -> list[np.ndarray]:
        """Each configuration's probabilities: the mean of its fold models' at its TTA mode, each model predicting
        every image in one kit.tta.predict_modes call over its own loader (as kit.member_predict.predict_member
        does: the views are planned once, and an out-of-memory halving holds for the rest of the images)."""
        from kit.data import ImageDataset, make_loader
        from kit.member_predict import tta_kwargs, tta_transform
        from kit.tta import predict_modes
        if batch_size is not None and batch_size < 1:
            raise RecipeError(f"--batch-size {batch_size}: predict at least 1 image a batch")
        device = self.device(device)
        chunk = {"tta_cpu_chunk_pixels": self.environment.get("tta_cpu_chunk_pixels")}  # as the plan fixed it
        n_models = sum(len(c.members) for c in self.configs)
        total, done, out = len(table) * n_models, 0, {}
        for c in self.configs:
            for m in c.members:
                workers = m.recipe.data.num_workers if num_workers is None else num_workers
                loader = make_loader(ImageDataset(table, np.arange(len(table)), tta_transform(m)),
                                     batch_size or m.recipe.train.batch_size * 2,  # predict_member's batch
                                     shuffle=False, num_workers=workers, seed=m.recipe.train.seed)
                by_mode, rows = predict_modes(self._model(m, device), _counted(loader, progress, done, total),
                                              [c.tta], **tta_kwargs(m, chunk, device, self.task))
                probs = np.zeros((len(table), len(self.classes)), np.float32)
                probs[rows] = by_mode[c.tta]
                out[m.name] = probs
                done += len(table)
        return [np.mean([out[m.name] for m in c.members], axis=0) for c in self.configs]

    def _model(self, member: MemberPlan, device):
        key = (member.name, str(device))
        if key not in self._models:
            made_with = self.versions if self.kind == "bundle" else None
            self._models[key] = build_member_model(member, self.task.n_outputs, self.weights_files[member.name],
                                                   device, made_with)
        return self._models[key]


def _counted(loader, progress, done: int, total: int):
    """The loader's batches, calling progress(images done, total) after each."""
    for batch in loader:
        yield batch
        done += len(batch[2])
        if progress is not None:
            progress(done, total)


# ---------------------------------------------------------------- one member, as kit.member_predict builds it

def build_member_model(member: MemberPlan, num_classes: int, weights_file: Path, device, versions=None):
    """The member's model in its planned architecture with its own weights (no pretrained download), on `device`.
    Weights: best.pt through torch.load(weights_only=True), or a bundle's safetensors; nothing is unpickled."""
    from kit.features import restore_member_model
    from kit.models.backbone import build_model, to_device
    model, _ = build_model(member.recipe.model, num_classes, member.pretrained_cfg, load_weights=False)
    model = restore_member_model(model, member.recipe.model, Path(weights_file).parent)
    state = read_weights(Path(weights_file))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        from timm import __version__ as timm_version
        made = f" (it was made with timm {versions['timm']}, this is timm {timm_version})" if versions else ""
        raise RunDirError(f"{weights_file} does not fit {member.recipe.model.backbone} as this timm builds it{made}: "
                          f"{str(e).splitlines()[0][:200]}; install the timm version it was made with") from None
    return to_device(model, device, member.channels_last).eval()


def read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from kit.inference._bundle import read_safetensors
        return read_safetensors(path)
    from kit.train import load_checkpoint  # the run's own rule: weights_only, UnsafeFileError naming the file
    return load_checkpoint(path)["model"]


def versions() -> dict:
    """The versions a bundle is made with: kit, and the torch and timm builds that define the models."""
    import safetensors
    import timm
    import torch
    from kit.version import __version__
    return {"kit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "safetensors": safetensors.__version__}
