"""A suite file: data sets x entries x seeds, each cell an ordinary kit run; validated like a recipe.

    name: transfer-mini
    base: recipes/quickstart.yaml          # optional: the recipe every entry overrides (default: kit's defaults)
    seeds: [0, 1, 2]
    budget: {epochs: 3}                    # the same for every entry: epochs, or {minutes: M} per cell (measured)
    recipe: {tta.modes: [none]}            # keys every cell gets
    datasets:
      digits: {data: {source: digits, digits_size: 32}}
      fashion:
        folder: data/fashion_dev             # a folder kit init understands: its data section as kit init writes it
        build: [python, ../shared/competitions/fashion_dev.py, "{folder}", --train, "2000"]   # run once if missing
        solution: data/fashion_dev_solution.csv   # test answers (id, label, Usage): cells are scored on them
        sample: 1000                         # a stratified sample of 1,000 labelled images (data.sample)
        recipe: {augment.input_size: 64}     # keys every entry gets on this data set
    entries:
      lite0-probe: {model: {backbone: efficientnet_lite0, strategy: feature_extract, head: logreg}}
      lite0-full: {model.backbone: efficientnet_lite0, model.strategy: full}
      mine: {recipe: recipes/mine.yaml}      # a whole recipe instead of overrides of `base`

Cell (data set d, entry e, seed s): the entry's recipe, the suite's keys, the data set's data section (a folder's
as kit init reads it, less kit init's split choice) and keys, the entry's keys, the budget, seed s
(ensemble.seeds [s], train.seed s), named <e>-s<s>, in <output_dir>/<suite>/<d>/. The split (data.seed) stays the
same for every cell of a data set, so seeds vary the training only and entries are compared on the same rows.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from kit.errors import RecipeError
from kit.recipe import Recipe, Seed, Spec, load_recipe, read_yaml

SUITE_FORMAT = 1
SPLIT_KEYS = ("split", "folds", "holdout_fraction", "refit")  # kit init's split choice, left out of a suite's data


class BudgetSpec(Spec):
    epochs: Optional[int] = Field(None, ge=1, le=10_000)  # train.epochs of every cell
    minutes: Optional[float] = Field(None, gt=0)  # or: the most epochs whose cell fits, measured as kit init does

    @model_validator(mode="after")
    def _one(self):
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs (the same for every entry) or minutes (per cell)")
        return self


class DatasetSpec(Spec):
    data: Optional[dict[str, Any]] = None  # a recipe's data: section
    folder: Optional[str] = None  # or a folder kit init understands
    build: Optional[list[str]] = None  # argv (no shell) run once when `folder` does not exist; "{folder}" is filled
    solution: Optional[str] = None  # test answers id,label,Usage (Public/Private): cells are scored on them
    sample: Optional[int] = Field(None, ge=2)  # a stratified sample of N labelled images (data.sample)
    recipe: dict[str, Any] = Field(default_factory=dict)  # keys every entry gets on this data set

    @model_validator(mode="after")
    def _source(self):
        if (self.data is None) == (self.folder is None):
            raise ValueError("give exactly one of data (a recipe's data: section) or folder (a dataset folder)")
        if self.build is not None and self.folder is None:
            raise ValueError("build makes `folder`: give the folder it writes")
        return self


class SuiteSpec(Spec):
    name: str
    base: Optional[str] = None
    output_dir: str = "runs/suites"
    leaderboard: Optional[str] = None  # SQLAlchemy URL; default as a recipe's
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    budget: BudgetSpec
    recipe: dict[str, Any] = Field(default_factory=dict)  # keys every cell gets (before the data set's and entry's)
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    entries: dict[str, dict[str, Any]] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v):
        Recipe._one_path_component(v)
        return v

    @field_validator("datasets", "entries")
    @classmethod
    def _names(cls, v):
        for k in v:
            if not k or "/" in k or "\\" in k or k in (".", "..") or k != k.strip():
                raise ValueError(f"{k!r} is not a name that can be a folder: letters, digits, '-', '_', '.'")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


@dataclass(frozen=True)
class Cell:
    dataset: str
    entry: str
    seed: int
    recipe: Recipe

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.entry}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    path: Path
    hash: str  # sha256 of the validated suite, 16 hex digits: recorded with every cell

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def root(self) -> Path:
        return Path(self.spec.output_dir) / self.spec.name

    @cached_property
    def cells(self) -> list[Cell]:
        return expand_cells(self)


def load_suite(path) -> Suite:
    """A suite file read and validated (unknown keys, types, every entry's recipe on every data set: a RecipeError
    names the file and the key)."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"suite key '{key}' in {path}: {first['msg']} (got {str(first.get('input'))[:80]!r}); "
                          f"a suite names `name`, `budget`, `datasets` and `entries` (see kit/bench/_suite.py)"
                          ) from None
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
    suite = Suite(spec, path, digest)
    _ = suite.cells  # every cell's recipe validates now, before any work
    return suite


def _dotted(over: dict) -> dict:
    """{section: {key: value}} and {"section.key": value} alike as dotted keys."""
    out = {}
    for k, v in over.items():
        if "." not in k and isinstance(v, dict) and k in Recipe.model_fields and k not in ("leaderboard",):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def dataset_data(suite: Suite, name: str) -> dict:
    """The data: section of data set `name`: as given, or as kit init writes it for its folder (plus sample)."""
    ds = suite.spec.datasets[name]
    if ds.data is not None:
        data = dict(ds.data)
    else:
        data = _init_data(suite, name)
    if ds.sample is not None:
        data["sample"] = ds.sample
    return data


def _init_data(suite: Suite, name: str) -> dict:
    """kit init's data section (and input size / crop) for a folder, written once to <suite>/<name>.init.yaml."""
    ds = suite.spec.datasets[name]
    folder = Path(ds.folder)
    if not folder.is_dir():
        if ds.build is None:
            raise RecipeError(f"suite key 'datasets.{name}.folder' in {suite.path}: {folder} does not exist; make it "
                              f"or give a `build` command that does")
        build_dataset(suite, name)
    out = suite.root / f"{name}.init.yaml"
    if not out.is_file():
        from kit.init import init_recipe
        out.parent.mkdir(parents=True, exist_ok=True)
        init_recipe(folder, out=out, budget=None)
    raw = read_yaml(out)
    # how to read the folder, not how kit init would split it for a competition: every data set of a suite is
    # split alike (the data set's `recipe:` may say otherwise)
    return {k: v for k, v in (raw.get("data") or {}).items() if k not in SPLIT_KEYS}


def init_keys(suite: Suite, name: str) -> dict:
    """The augment keys kit init chose for a folder data set (input size and crop for small images)."""
    ds = suite.spec.datasets[name]
    if ds.folder is None:
        return {}
    raw = read_yaml(suite.root / f"{name}.init.yaml")
    return {f"augment.{k}": v for k, v in (raw.get("augment") or {}).items() if k in ("input_size", "crop_pct")}


def build_dataset(suite: Suite, name: str) -> None:
    """Run data set `name`'s build command (argv, no shell), once: it must create the folder."""
    import subprocess
    ds = suite.spec.datasets[name]
    argv = [a.replace("{folder}", ds.folder) for a in ds.build]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0 or not Path(ds.folder).is_dir():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RecipeError(f"suite key 'datasets.{name}.build' in {suite.path}: {' '.join(argv)} exited "
                          f"{done.returncode} without making {ds.folder} ({tail[0][:200]}); fix the command")


def expand_cells(suite: Suite) -> list[Cell]:
    """Every (data set, entry, seed) with its resolved recipe, data set by data set."""
    s = suite.spec
    base = load_recipe(s.base) if s.base else None
    cells = []
    for d in s.datasets:
        data = dataset_data(suite, d)
        for e, over in s.entries.items():
            over = dict(over)
            entry_base = load_recipe(over.pop("recipe")) if "recipe" in over else base
            raw = (entry_base.to_dict() if entry_base is not None else {})
            raw = {k: v for k, v in raw.items() if k not in ("name", "output_dir", "leaderboard", "data")}
            keys = {**_dotted(s.recipe), **init_keys(suite, d), **_dotted(s.datasets[d].recipe), **_dotted(over)}
            if s.budget.epochs is not None:
                keys["train.epochs"] = s.budget.epochs
            for seed in s.seeds:
                where = f"{suite.path} (data set {d}, entry {e}, seed {seed})"
                cell_keys = {**keys, "ensemble.seeds": [seed], "train.seed": seed}
                recipe = _recipe(raw, data, cell_keys, name=f"{e}-s{seed}",
                                 output_dir=str(Path(s.output_dir) / s.name / d), leaderboard=s.leaderboard,
                                 where=where)
                cells.append(Cell(d, e, seed, recipe))
    return cells


def _recipe(raw: dict, data: dict, keys: dict, *, name, output_dir, leaderboard, where) -> Recipe:
    from kit.recipe import apply_overrides, recipe_from_dict
    raw = {**raw, "name": name, "output_dir": output_dir, "data": data,
           **({"leaderboard": leaderboard} if leaderboard else {})}
    return recipe_from_dict(apply_overrides(raw, keys, source=where), source=where)
