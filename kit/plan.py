"""The run plan: a recipe resolved once, before any work, into every member it will train.

    plan = make_plan(recipe, sources)     # overrides already applied by load_recipe / Recipe.with_overrides
    print(format_plan(plan))              # `kit plan RECIPE`: a dry run
    save_plan(plan, run_dir / "plan.json"); load_plan(path)

Everything that can be decided before training is decided here and nowhere else:
- each member (backbones x seeds x folds) with its own fully resolved recipe: the backbone's overrides applied,
  `train.seed` set, `model.strategy: auto` replaced by the advised keys (kit.advise, measured once, cached),
  `model.weights: auto` replaced by where the weights come from (offline package or hub);
- the pretrained_cfg overlay its model carries (kit.models.backbone.build_model) and the data config derived from
  it (input size, crop, normalisation), from which every transform is made;
- the memory format (channels_last) and, on the CPU, how depthwise weight gradients are computed (depthwise_taps),
  each measured where the recipe leaves it open, and the thread count: they change floating-point results, so they
  are fixed in the plan and reused on resume and by every machine sharing the run;
- the TTA modes each member predicts (`none` always among them, so that "no TTA" can always win).

Training, prediction, features, tuning, blending, submission and the leaderboard read the plan and resolve nothing.
A run directory keeps its plan.json: a resumed run, `kit predict`, `kit submit` and other machines load it as it is.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.errors import RunDirError
from kit.readers import NUMBER as _NUMBER
from kit.recipe import EnsembleSpec, Recipe, backbone_recipe, recipe_hash

PLAN_FORMAT = 1
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class MemberPlan:
    index: int
    name: str  # "<backbone>-s<seed>-f<fold>"
    config: str  # "<backbone>-s<seed>": the fold models of one configuration share it
    backbone_index: int
    seed: int
    fold: int
    recipe: Recipe  # fully resolved: no `auto` strategy or weights left, train.seed = seed
    pretrained_cfg: dict  # overlay on timm's pretrained_cfg that the model carries (kit.models.backbone)
    data_config: dict  # input_size, mean, std, crop_pct, interpolation: what the model's pretrained_cfg gives
    channels_last: bool
    tta_modes: tuple  # modes predicted for this member, "none" first
    weights: str  # where the pretrained weights come from: offline, hub, none, or a file
    param_groups: list = field(default_factory=list)  # [{"name", "params", "lr", "weight_decay"}] for display
    frozen_stages: list = field(default_factory=list)  # stages frozen at each epoch (gradual unfreezing)
    n_stages: int = 0
    round: int = 0  # pseudo-label round (kit.pseudo): round r > 0 learns from round r - 1's blend
    refit_of: str | None = None  # data.refit: the validated member whose epochs, TTA and blend weight this one
    # takes, retrained on every labelled image; its test predictions replace that member's (never validated)
    depthwise_taps: bool = False  # trains with kit.models.depthwise's weight gradients (CPU, measured in the plan)

    @property
    def tta_side(self) -> int:
        """R, the side of the square this member's TTA views are cut from (kit.tta.tta_resize)."""
        from kit.tta import tta_resize
        return tta_resize(self.data_config["input_size"], self.data_config["crop_pct"], self.recipe.tta.resize)


@dataclass(frozen=True)
class RunPlan:
    recipe: Recipe
    recipe_hash: str
    members: tuple
    folds: tuple  # validated folds: (0,) for a holdout
    environment: dict  # numerics-changing choices: threads, torch version, measured formats
    data: dict  # counts and classes at planning time
    advice: dict = field(default_factory=dict)  # backbone index -> kit.advise measurements (strategy auto)

    @property
    def task(self):
        """The task (kit.task.Task) resolved when the run was planned; a plan from before tasks: one class per
        image."""
        from kit.task import Task, multiclass
        if "task" in self.data:
            return Task.from_dict(self.data["task"])
        return multiclass(self.data["classes"], self.recipe.train.metric)

    @property
    def tta_modes(self) -> list[str]:
        return list(dict.fromkeys(m for member in self.members for m in member.tta_modes))

    @property
    def rounds(self) -> list[int]:
        return sorted({m.round for m in self.members})

    def configs(self, round: int | None = None) -> dict[str, list[MemberPlan]]:
        """Configuration -> its fold members, of one pseudo-label round (default: the last, which submits)."""
        round = self.rounds[-1] if round is None else round
        out: dict[str, list[MemberPlan]] = {}
        for m in self.members:
            if m.round == round and m.refit_of is None:
                out.setdefault(m.config, []).append(m)
        return out

    def refits(self, config: str) -> list[MemberPlan]:
        """The members refitted on all labelled images for this configuration (data.refit: one per seed
        of a list of seeds), whose test predictions replace its fold members'; [] without refit."""
        return [m for m in self.members if m.refit_of is not None and m.config == config]


# ---------------------------------------------------------------- making a plan

def fold_ids_of(recipe: Recipe) -> tuple:
    return tuple(range(recipe.data.folds)) if recipe.data.split == "kfold" else (0,)


def _backbone_names(recipe: Recipe) -> list[str]:
    backbones = recipe.ensemble.backbones or [{}]
    names = [b.get("model", {}).get("backbone", recipe.model.backbone) for b in backbones]
    return [n if names.count(n) == 1 else f"{n}.{i}" for i, n in enumerate(names)]


def _resolve_backbone(recipe: Recipe, b: int, sources, advice: dict) -> Recipe:
    """ensemble.backbones[b]'s recipe with strategy, lr and weights resolved (overrides applied in one place)."""
    from kit.models.pretrained import resolve_weights
    r = backbone_recipe(recipe, b) if recipe.ensemble.backbones else recipe.with_overrides(
        {"ensemble": EnsembleSpec().model_dump()})  # a member is not an ensemble
    over = {}
    if r.model.strategy == "auto" and not sources.task.softmax:
        advice[str(b)] = {"strategy": "full", "recipe_keys": {"model.strategy": "full"}, "measurements": {},
                          "reasoning": [f"the advisor's probes classify; a {sources.task.kind} target fine-tunes "
                                        f"every layer (strategy: full)"]}
        over["model.strategy"] = "full"
    elif r.model.strategy == "auto":
        from kit.advise import cached_advice
        a = cached_advice(r, sources)
        advice[str(b)] = {"strategy": a.strategy, "recipe_keys": a.recipe_keys, "measurements": a.measurements,
                          "reasoning": a.reasoning}
        over.update(a.recipe_keys)
    if r.train.lr is None:  # the resolved strategy's default lr, stated in the member's recipe
        over["train.lr"] = r.train.lr_for(over.get("model.strategy", r.model.strategy))
    weights = resolve_weights(r.model.backbone, r.model.weights)
    if weights != r.model.weights:
        over["model.weights"] = weights
    return r.with_overrides(over, source=f"plan of {recipe.name} (backbone {b})") if over else r


def choose_workers(r: Recipe, sources, data_config: dict) -> int:
    """data.num_workers: auto -> the worker count measured on this backbone's training pipeline (a short timing
    of kit.data.loader.choose_num_workers); a number stays as it is."""
    if r.data.num_workers != "auto":
        return int(r.data.num_workers)
    import numpy as np
    from kit.data import ImageDataset, create_train_transform
    from kit.data.loader import choose_num_workers
    n = min(len(sources.train), 4 * r.train.batch_size)
    dataset = ImageDataset(sources.train, np.arange(n), create_train_transform(r.augment, data_config))
    return int(choose_num_workers(dataset, r.train.batch_size))


def check_recipe_models(recipe: Recipe) -> None:
    """What a recipe's checks (kit.recipe) leave to the model: each backbone's model.cut_at and model.frozen_stages
    within its stages, and augment.train built as training builds it at the model's real input size (the offline
    weights' or augment.input_size). Models are built on the meta device (no memory, ~0.03 s); called before the
    data is read (kit.context.prepare_run) and by every plan, so `kit plan` refuses what `kit run` refuses."""
    import torch
    from kit.data.transforms import check_augment
    from kit.models.backbone import build_model, model_data_config, pretrained_overlay
    from kit.models.strategies import check_stages
    for b in range(len(recipe.ensemble.backbones or [{}])):
        r = backbone_recipe(recipe, b) if recipe.ensemble.backbones else recipe
        where = f"the recipe of {recipe.name}" + (f" (ensemble.backbones[{b}])" if recipe.ensemble.backbones else "")
        check_stages(r.model, where)
        if not r.augment.train:
            continue
        try:
            with torch.device("meta"):
                model, _ = build_model(r.model, None, pretrained_overlay(r.model, r.augment), load_weights=False)
            size = model_data_config(model)["input_size"]
        except Exception:  # a model that cannot be built on the meta device: the plan checks it at full size
            size = None
        if size is not None:
            check_augment(r.augment, size, where)


def _describe_model(r: Recipe, num_classes: int, device, source: str) -> dict:
    """pretrained_cfg, data config, channels_last, depthwise_taps, parameter groups and freezing of one backbone's
    model; augment.train checked at its real input size on the way."""
    from kit.data.transforms import check_augment
    from kit.models.backbone import build_model, model_data_config, pretrained_overlay
    from kit.models.strategies import frozen_count, param_groups, stage_groups
    from kit.runtime import use_channels_last, use_depthwise_taps
    overlay = pretrained_overlay(r.model, r.augment)
    model, _ = build_model(r.model, num_classes, overlay, load_weights=False)  # shapes only: weights don't matter
    cfg = model_data_config(model)
    check_augment(r.augment, cfg["input_size"], source)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for g in param_groups(model, r.model, r.train):
        first = names[id(g["params"][0])] if g["params"] else ""
        groups.append({"first": first, "params": int(sum(p.numel() for p in g["params"])),
                       "lr": float(g["lr"]), "weight_decay": float(g.get("weight_decay", r.train.weight_decay))})
    n_stages = len(stage_groups(model))
    frozen = [frozen_count(r.model, e, n_stages) for e in range(r.train.epochs)]
    channels_last = use_channels_last(r.model.channels_last, model, cfg["input_size"], device)
    taps = r.model.strategy != "feature_extract" and use_depthwise_taps(  # a head on embeddings: no conv trains
        r.model.depthwise_taps, model, cfg["input_size"], device, channels_last)
    return {"pretrained_cfg": _jsonable(overlay), "data_config": cfg, "channels_last": bool(channels_last),
            "depthwise_taps": bool(taps), "param_groups": groups, "frozen_stages": frozen, "n_stages": n_stages}


def _check_teacher(recipe: Recipe, r: Recipe, sources, advised: bool = False) -> None:
    """Pseudo-labels and distillation train on target distributions: not with mixup/cutmix (timm's Mixup mixes
    class indices) nor with cached embeddings; pseudo-labels need test images."""
    from kit.errors import DataError, RecipeError
    learns = recipe.pseudo.rounds > 0 or recipe.distill.teacher is not None
    what = "pseudo.rounds" if recipe.pseudo.rounds > 0 else "distill.teacher"
    if learns and (r.train.mixup > 0 or r.train.cutmix > 0):
        raise RecipeError(f"recipe key '{what}' of {recipe.name}: a member that learns from a teacher trains on "
                          f"target distributions, which train.mixup / train.cutmix cannot mix; set them to 0")
    if learns and r.model.strategy == "feature_extract":
        raise RecipeError(f"recipe key '{what}' of {recipe.name}: model.strategy feature_extract trains a head on "
                          f"cached embeddings of the labelled images only; use finetune, full or cut_at")
    if recipe.data.refit and r.model.strategy == "feature_extract" and not advised:
        raise RecipeError(f"recipe key 'data.refit' of {recipe.name}: feature_extract heads are chosen by early "
                          f"stopping on the holdout and train in seconds; refit applies to fine-tuned members")
    if recipe.pseudo.rounds > 0 and sources.test is None:
        raise DataError(f"recipe key 'pseudo.rounds' of {recipe.name}: pseudo-labels are made on the test images, "
                        f"and data.* gives none (data.test_dir)")
    if recipe.distill.teacher and not (Path(recipe.distill.teacher) / PLAN_FILE).is_file():
        raise RecipeError(f"recipe key 'distill.teacher' of {recipe.name}: {recipe.distill.teacher} is not a run "
                          f"directory with a plan ({PLAN_FILE}); give the teacher's runs/<name>")


def make_plan(recipe: Recipe, sources) -> RunPlan:
    """Expand and resolve every member of `recipe` (see the module docstring). `sources`: kit.data.Sources."""
    import torch
    from kit.runtime import resolve_device
    from kit.data import make_folds
    device = resolve_device(recipe.train.device)
    from kit.task import resolve_task
    check_recipe_models(recipe)
    task = resolve_task(sources.task, recipe.task, recipe.train.metric)
    h = recipe_hash(recipe)  # of the recipe as written: the resolved metric below is the plan's decision
    if recipe.train.metric != task.metric:
        recipe = recipe.with_overrides({"train.metric": task.metric}, source=f"plan of {recipe.name}")
    check_task_recipe(recipe, task)
    make_folds(sources.train.labels, recipe.data, classes=sources.train.classes,
               groups=sources.train.groups)  # kit run's split checks, now
    num_classes = task.n_outputs
    folds, names, advice = fold_ids_of(recipe), _backbone_names(recipe), {}
    members = []
    for b in range(len(recipe.ensemble.backbones or [{}])):
        r = _resolve_backbone(recipe, b, sources, advice)
        _check_teacher(recipe, r, sources, advised=str(b) in advice)
        where = f"the recipe of {recipe.name}" + (f" (ensemble.backbones[{b}])" if recipe.ensemble.backbones else "")
        d = _describe_model(r, num_classes, device, where)
        if r.data.num_workers == "auto":
            r = r.with_overrides({"data.num_workers": choose_workers(r, sources, d["data_config"])},
                                 source=f"plan of {recipe.name} (backbone {b})")
        modes = tuple(dict.fromkeys(["none", *r.tta.modes]))
        if r.tta.mode not in ("auto", *modes):
            raise RunDirError(f"tta.mode {r.tta.mode!r} of backbone {b} is not among its tta.modes {list(modes)}")
        for seed in recipe.seeds:
            rs = r.with_overrides({"train.seed": seed}, source=f"plan of {recipe.name}")
            for rnd in range(recipe.pseudo.rounds + 1):
                for fold in folds:
                    config = f"{names[b]}-s{seed}" + (f"-r{rnd}" if rnd else "")
                    members.append(MemberPlan(len(members), f"{config}-f{fold}", config, b, seed, fold, rs,
                                              tta_modes=modes, weights=r.model.weights, round=rnd, **d))
    last = max(m.round for m in members)  # data.refit: each validated member of the last round, on every image
    members += [refit for m in members if m.round == last for refit in _refits(m, recipe)]
    # a round trains after the one it learns from; a refit after the member it repeats
    members.sort(key=lambda m: (m.round, m.refit_of is not None, m.index))
    members = [MemberPlan(**{**m.__dict__, "index": i}) for i, m in enumerate(members)]
    from kit.tta import CPU_CHUNK_PIXELS
    env = {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": device.type,
           "tta_cpu_chunk_pixels": CPU_CHUNK_PIXELS}
    data = {"n_train": len(sources.train), "n_test": 0 if sources.test is None else len(sources.test),
            "classes": list(sources.train.classes), "task": task.to_dict()}
    return RunPlan(recipe, h, tuple(members), folds, env, data, advice)


def check_task_recipe(recipe: Recipe, task) -> None:
    """What a task cannot do, refused before work starts, with the reason: mixup and cutmix mix class indices
    (timm's Mixup), label smoothing smooths a distribution over classes, teachers (pseudo-labels, distillation)
    give soft class distributions, and TTA merges other than the mean and blends such as gmean take roots and
    products of one distribution a row."""
    from kit.errors import RecipeError
    backbones = [backbone_recipe(recipe, b) for b in range(len(recipe.ensemble.backbones))] or [recipe]
    kind = task.kind
    for r in backbones:
        if r.model.strategy == "feature_extract" and r.model.head not in task.heads:
            raise RecipeError(f"recipe key 'model.head' of {recipe.name} is {r.model.head!r}, which does not fit a "
                              f"{kind} target; use one of {', '.join(task.heads)}")
        if not task.softmax and (r.train.mixup > 0 or r.train.cutmix > 0 or r.train.label_smoothing > 0):
            key = "train.mixup" if r.train.mixup > 0 else "train.cutmix" if r.train.cutmix > 0 else \
                "train.label_smoothing"
            raise RecipeError(f"recipe key '{key}' of {recipe.name}: it mixes or smooths class distributions (timm's "
                              f"Mixup), and this {kind} target has none; set it to 0")
        if r.tta.merge not in task.tta_merges:
            raise RecipeError(f"recipe key 'tta.merge' of {recipe.name} is {r.tta.merge!r}, which merges one class "
                              f"distribution a row; a {kind} target's views are merged by {', '.join(task.tta_merges)}")
    if not task.softmax and recipe.ensemble.temperature:
        raise RecipeError(f"recipe key 'ensemble.temperature' of {recipe.name}: temperature scaling softens class "
                          f"distributions, and this {kind} target has none; remove it")
    if not task.teaches and (recipe.pseudo.rounds > 0 or recipe.distill.teacher is not None):
        key = "pseudo.rounds" if recipe.pseudo.rounds > 0 else "distill.teacher"
        raise RecipeError(f"recipe key '{key}' of {recipe.name}: a teacher's targets are soft class distributions "
                          f"(confident rows by their top probability), which a {kind} target does not have; remove "
                          f"it")
    bad = [m for m in recipe.ensemble.methods if m not in task.blends]
    if bad and tuple(recipe.ensemble.methods) != EnsembleSpec().methods and \
            list(recipe.ensemble.methods) != list(EnsembleSpec().methods):  # the default: what blends this task
        raise RecipeError(f"recipe key 'ensemble.methods' of {recipe.name} lists {bad}, which do not blend a {kind} "
                          f"target; use some of {', '.join(task.blends)}")


def _refits(m: MemberPlan, recipe: Recipe) -> list[MemberPlan]:
    """Validated member `m` trained again on every labelled image, once per seed of data.refit (true: its own
    seed): <config>-refit for its own seed, <config>-refit-s<seed> for another. None for a head on cached
    embeddings, which strategy: auto may resolve to (kit init writes auto with refit): such a head is chosen by
    early stopping on the holdout and trains in seconds, so its validated member predicts the test images itself
    (format_plan says so; a recipe that states feature_extract with refit is refused by _check_teacher)."""
    if m.recipe.model.strategy == "feature_extract":
        return []
    out = []
    for seed in recipe.data.refit_seeds(m.seed):
        r = m.recipe if seed == m.seed else m.recipe.with_overrides({"train.seed": seed},
                                                                    source=f"plan of {recipe.name}")
        name = f"{m.config}-refit" + ("" if seed == m.seed else f"-s{seed}")
        out.append(MemberPlan(**{**m.__dict__, "name": name, "seed": seed, "recipe": r, "fold": -1,
                                 "refit_of": m.name}))
    return out


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# ---------------------------------------------------------------- plan.json

def plan_to_dict(plan: RunPlan) -> dict:
    members = []
    for m in plan.members:
        d = asdict(m)
        d["recipe"] = m.recipe.to_dict()
        d["tta_modes"] = list(m.tta_modes)
        members.append(d)
    return {"format": PLAN_FORMAT, "recipe_hash": plan.recipe_hash, "recipe": plan.recipe.to_dict(),
            "folds": list(plan.folds), "environment": plan.environment, "data": plan.data, "advice": plan.advice,
            "members": members}


def plan_from_dict(d: dict, source: str = PLAN_FILE, output_dir: str | None = None) -> RunPlan:
    """A plan read back (JSON only: nothing in it runs code), the one reader of plan.json: its recipes are
    validated as types only, since the data paths they name need not exist where a plan is read (a bundle on a
    machine without the training data; `kit predict`). `output_dir` relocates the run (not hashed)."""
    from pydantic import ValidationError
    from kit.recipe import TTA_MODES
    from kit.readers import check_schema
    if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
        got = d.get("format") if isinstance(d, dict) else None
        raise RunDirError(f"{source} is a plan of format {got}, this kit reads format {PLAN_FORMAT}; plan the run "
                          f"again in a new run directory")
    try:
        check_schema(d, PLAN_SCHEMA)
        for m in d["members"]:
            if not _one_folder_name(m["name"]) or not _one_folder_name(m["config"]):
                raise ValueError(f"member name {m['name']!r} is not one folder name")
            bad = [t for t in m["tta_modes"] if t not in TTA_MODES]
            if bad:
                raise ValueError(f"member {m['name']} names unknown TTA modes {bad[:3]}")
    except ValueError as e:
        raise RunDirError(f"{source} is not a plan this kit can read ({str(e)[:200]}); plan the run again in a new "
                          f"run directory, or export the bundle again") from None

    def recipe(raw):
        return Recipe.model_validate(dict(raw, **({"output_dir": output_dir} if output_dir else {})))
    try:
        members = tuple(MemberPlan(**{**m, "recipe": recipe(m["recipe"]), "tta_modes": tuple(m["tta_modes"])})
                        for m in d["members"])
        return RunPlan(recipe(d["recipe"]), str(d["recipe_hash"]), members, tuple(d["folds"]), dict(d["environment"]),
                       dict(d["data"]), dict(d.get("advice") or {}))
    except (ValidationError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{source} is not a plan this kit can read ({type(e).__name__}: {str(e)[:200]}); "
                          f"plan the run again in a new run directory, or export the bundle again") from None


_MEMBER_SCHEMA = {"index": int, "name": str, "config": str, "backbone_index": int, "seed": int, "fold": int,
                  "recipe": dict, "pretrained_cfg": dict, "channels_last": bool, "tta_modes": [str], "weights": str,
                  "data_config": {"input_size": int, "mean": [_NUMBER], "std": [_NUMBER], "crop_pct": _NUMBER,
                                  "interpolation": str},
                  "round?": int, "refit_of?": (str, type(None)), "depthwise_taps?": bool, "n_stages?": int,
                  "param_groups?": [dict], "frozen_stages?": [int]}
# what plan_from_dict reads, checked before anything uses it (a plan.json is also read from a shared bundle)
PLAN_SCHEMA = {"format": int, "recipe_hash": str, "recipe": dict, "folds": [int], "environment": dict,
               "data": {"n_train": int, "n_test": int, "classes": [str], "task?": dict}, "advice?": dict,
               "members": [_MEMBER_SCHEMA]}


def _one_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def save_plan(plan: RunPlan, path) -> Path:
    from kit.rundir import write_json_atomic
    return write_json_atomic(path, plan_to_dict(plan))


def load_plan(path, output_dir: str | None = None) -> RunPlan:
    from kit.readers import read_json
    path = Path(path)
    d = read_json(path, fix="remove it to plan the run again (or export the bundle again)")
    return plan_from_dict(d, str(path), output_dir)


def plan_run(recipe: Recipe, sources) -> RunPlan:
    """The run's plan: its saved plan.json when the run directory holds one for this recipe (so every decision
    made once stays made: resume, kit predict, other machines), else a new plan."""
    path = recipe.run_dir / PLAN_FILE
    if path.is_file():
        plan = load_plan(path, output_dir=recipe.output_dir)
        check_same_recipe(recipe, plan.recipe_hash)
        return _with_unhashed(plan, recipe)
    return make_plan(recipe, sources)


def check_same_recipe(recipe: Recipe, saved_hash: str | None) -> None:
    """The one different-recipe check: a run directory holds the run of one recipe (its hash), kept as it is."""
    h = recipe_hash(recipe)
    if saved_hash is not None and saved_hash != h:
        raise RunDirError(f"{recipe.run_dir} holds a run of a different recipe (hash {saved_hash}, this one {h}); "
                          f"its results are kept: set a new `name:` (or --set name=...) or output_dir, or remove "
                          f"{recipe.run_dir} yourself")


def _with_unhashed(plan: RunPlan, recipe: Recipe) -> RunPlan:
    """A saved plan with the keys outside the hash (kit.recipe.UNHASHED_KEYS: where the leaderboard is, compile,
    loader workers, search) taken from `recipe`, the recipe being run now: they change where and how fast a run
    goes, not what it computes, so a resumed run uses the values given now, as recipe.yaml shows them. A member's
    data.num_workers resolved from `auto` at planning stays as measured unless the recipe now names a number."""
    from kit.recipe import UNHASHED_KEYS
    over = {}
    for path in UNHASHED_KEYS:
        key = ".".join(path)
        if key == "output_dir":
            continue  # plan_run relocated the plan already
        now = recipe.to_dict()
        for p in path:
            now = now[p]
        over[key] = now

    def apply(r: Recipe, member: bool) -> Recipe:
        o = dict(over)
        if member and o.get("data.num_workers") == "auto":
            o.pop("data.num_workers")  # measured once by the plan (choose_workers): kept
        changed = {k: v for k, v in o.items() if _get(r, k) != v}
        return Recipe.model_validate(_set_all(r.to_dict(), changed)) if changed else r
    members = tuple(MemberPlan(**{**m.__dict__, "recipe": apply(m.recipe, True)}) for m in plan.members)
    return RunPlan(apply(plan.recipe, False), plan.recipe_hash, members, plan.folds, plan.environment, plan.data,
                   plan.advice)


def _get(r: Recipe, key: str):
    node = r.to_dict()
    for p in key.split("."):
        node = node[p]
    return node


def _set_all(d: dict, changes: dict) -> dict:
    from kit.recipe import set_path
    for k, v in changes.items():
        d = set_path(d, k, v)
    return d


# ---------------------------------------------------------------- showing a plan

def estimated_work(plan: RunPlan, m: MemberPlan) -> dict:
    """Images through the model for one member: training (epochs x training rows), and prediction (distinct TTA
    views x validation and test rows). A refit trains on every row, at most for the planned epochs."""
    from kit.tta import n_distinct_views
    n = plan.data["n_train"]
    n_val = 0 if m.refit_of is not None else round(n / plan.recipe.data.folds) \
        if plan.recipe.data.split == "kfold" else round(plan.recipe.data.holdout_fraction * n)
    full_frame = m.tta_side == m.data_config["input_size"]  # every crop is the whole image
    views = n_distinct_views(m.tta_modes, tuple(m.recipe.tta.scales), full_frame)
    return {"train_images": (n - n_val) * m.recipe.train.epochs, "predict_images": views * (n_val + plan.data["n_test"]),
            "views": views}


def format_plan(plan: RunPlan) -> list[str]:
    """Printable lines: what `kit run` would do, member by member."""
    r = plan.recipe
    lines = [f"plan of {r.name} (recipe hash {plan.recipe_hash}) -> {r.run_dir}",
             f"data: {plan.data['n_train']} labelled images, {plan.data['n_test']} test, "
             f"{plan.task.describe()}; split {r.data.split}"
             + (f" ({r.data.folds} folds)" if r.data.split == "kfold" else f" (holdout {r.data.holdout_fraction})"),
             f"environment: {plan.environment['device']}, {plan.environment['threads']} threads, "
             f"torch {plan.environment['torch']}"]
    for b, a in plan.advice.items():
        lines.append(f"strategy auto (backbone {b}): {a['strategy']} " + json.dumps(a["recipe_keys"]))
    total_train = total_pred = 0
    for cfg, ms in plan.configs().items():
        m = ms[0]
        mr = m.recipe
        work = estimated_work(plan, m)
        total_train += work["train_images"] * len(ms)
        total_pred += work["predict_images"] * len(ms)
        dc = m.data_config
        lines += [f"{cfg}: {len(ms)} member(s) (folds {', '.join(str(x.fold) for x in ms)}; index "
                  f"{ms[0].index}-{ms[-1].index})",
                  f"  model {mr.model.backbone}, weights {m.weights}, strategy {mr.model.strategy}"
                  + (f" cut_at {mr.model.cut_at}" if mr.model.cut_at is not None else "")
                  + (f", head {mr.model.head}" if mr.model.strategy == "feature_extract" else ""),
                  f"  input {dc['input_size']} px, crop_pct {dc['crop_pct']}, mean {dc['mean']}, std {dc['std']}, "
                  f"{dc['interpolation']}; {'channels_last' if m.channels_last else 'contiguous'}"
                  + ("; depthwise weight gradients by taps" if m.depthwise_taps else ""),
                  f"  train {mr.train.epochs} epochs x batch {mr.train.batch_size}, {mr.train.optimizer} "
                  f"{mr.train.scheduler} (warm-up {mr.train.warmup:g} epochs), seed {m.seed}",
                  "  stages frozen by epoch: " + _runs(m.frozen_stages) + f" (of {m.n_stages})"]
        for g in m.param_groups:
            lines.append(f"    group from {g['first'] or '?'}: {g['params']:,} params, lr {g['lr']:.3g}, "
                         f"weight decay {g['weight_decay']:.3g}")
        lines.append(f"  TTA modes {', '.join(m.tta_modes)} (choice: {mr.tta.mode}); about {work['train_images']:,} "
                     f"training and {work['predict_images']:,} prediction images a member")
        refits = plan.refits(cfg)
        if r.data.refit and not refits and m.round == plan.rounds[-1]:
            lines.append("  no refit: strategy auto chose a head on cached embeddings, chosen by early stopping on "
                         "the holdout; its validated member predicts the test images")
        if refits:
            rw = estimated_work(plan, refits[0])
            total_train += rw["train_images"] * len(refits)
            total_pred += rw["predict_images"] * len(refits)
            lines.append(f"  refit on all {plan.data['n_train']:,} labelled images for the epochs the holdout keeps, "
                         f"predicting the test images: {', '.join(x.name for x in refits)} (seed "
                         f"{', '.join(str(x.seed) for x in refits)}; index {', '.join(str(x.index) for x in refits)}); "
                         f"at most {rw['train_images']:,} training and {rw['predict_images']:,} prediction images each")
    lines.append(f"total: {len(plan.members)} members; about {total_train:,} training and {total_pred:,} prediction "
                 f"images through the model; blending {', '.join(m for m in r.ensemble.methods if m in plan.task.blends)} "
                 f"(choice: {r.ensemble.choose})")
    return lines


def _runs(values: list) -> str:
    """[3, 3, 2, 1] -> '1-2: 3, 3: 2, 4: 1' (epochs counted from 1)."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            span = f"{start + 1}" if i - start == 1 else f"{start + 1}-{i}"
            out.append(f"{span}: {values[start]}")
            start = i
    return ", ".join(out)
