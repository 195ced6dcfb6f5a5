"""The Recipe, a whole run's spec (its sections are in kit.recipe._specs): validation of a raw dict into it with
pydantic's errors explained as one line a key, `key=value` overrides, the recipe hash, and the recipe each entry of
ensemble.backbones makes of it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ValidationError, field_validator

from kit.errors import RecipeError
from kit.recipe._checks import _check_plain, _check_semantics, _key, _short, _unknown_key, load_yaml
from kit.recipe._specs import (AugmentSpec, DataSpec, DistillSpec, EnsembleSpec, ModelSpec, PseudoSpec, SearchParam,
                               SearchSpec, Spec, SubmitSpec, TaskSpec, TrainSpec, TTASpec)


class Recipe(Spec):
    name: str = "recipe"
    output_dir: str = "runs"  # runs land in output_dir/name
    leaderboard: Optional[str] = None  # SQLAlchemy URL; default leaderboard/leaderboard.sqlite
    data: DataSpec = DataSpec()
    task: TaskSpec = TaskSpec()
    augment: AugmentSpec = AugmentSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    tta: TTASpec = TTASpec()
    ensemble: EnsembleSpec = EnsembleSpec()
    submit: SubmitSpec = SubmitSpec()
    search: SearchSpec = SearchSpec()
    pseudo: PseudoSpec = PseudoSpec()
    distill: DistillSpec = DistillSpec()

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v):
        # the run lands in output_dir/name: a name with a separator or '..' would write somewhere else
        if not v or v in (".", "..") or "/" in v or "\\" in v or v != v.strip() or "\0" in v:
            raise ValueError(f"a run name is one folder name (letters, digits, '-', '_', '.'), got {v!r}; "
                             f"put the folder in output_dir instead")
        return v

    @field_validator("leaderboard")
    @classmethod
    def _leaderboard_without_password(cls, v):
        from kit.dburl import without_password
        return without_password(v)  # kit.dburl: the password is used to connect, never written or printed

    @property
    def seeds(self) -> list[int]:
        return list(self.ensemble.seeds or [self.train.seed])

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides, source: str = "<overrides>") -> "Recipe":
        """A new, validated recipe with dotted keys set: {"train.lr": 3e-4} or [("train.lr", 3e-4)] or
        ["train.lr=3e-4"]. The one place where recipes are changed after loading (backbones, seeds, trials,
        advice, best.yaml all go through it)."""
        raw = apply_overrides(self.to_dict(), overrides, source=source)
        return recipe_from_dict(raw, source=source)
def backbone_overrides(over: dict) -> dict:
    """ensemble.backbones[i] ({section: {key: value}}) as dotted overrides {"section.key": value}."""
    return {f"{section}.{k}": v for section, values in over.items() for k, v in (values or {}).items()}


def backbone_recipe(recipe: Recipe, i: int, source: str = "<recipe>") -> Recipe:
    """The recipe of ensemble.backbones[i]: the run's recipe with that entry's overrides, as one member sees it
    (its ensemble section reset: a member is not an ensemble)."""
    over = dict(backbone_overrides(recipe.ensemble.backbones[i]), ensemble=EnsembleSpec().model_dump())
    return recipe.with_overrides(over, source=f"{source} (ensemble.backbones[{i}])")


def recipe_from_dict(raw: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{source} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a {type(raw).__name__}")
    _check_plain(raw, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e, source)) from None
    _check_semantics(recipe, source)
    for i in range(len(recipe.ensemble.backbones)):  # each entry makes a valid recipe of its own
        backbone_recipe(recipe, i, source)
    return recipe


# Keys that change where or how fast a run goes, not what it computes: left out of the hash.
UNHASHED_KEYS = (("output_dir",), ("leaderboard",), ("data", "num_workers"), ("train", "compile"), ("search",))
# Keys that tell seeds of one configuration apart: the leaderboard groups entries that differ only in these (and in
# the unhashed keys, and the device) as one configuration, reported as mean +- std.
SEED_KEYS = (("train", "seed"), ("ensemble", "seeds"), ("data", "seed"))
NOT_CONFIG_KEYS = UNHASHED_KEYS + SEED_KEYS + (("train", "device"),)


def drop_keys(d: dict, paths) -> dict:
    """A copy of a recipe dict without the keys at these paths (tuples of section names)."""
    d = copy.deepcopy(d)
    for path in paths:
        node = d
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return d


def recipe_hash(recipe: Recipe) -> str:
    d = drop_keys(recipe.to_dict(), UNHASHED_KEYS)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str, source: str | None = None) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); the value is read as YAML. `source`: the recipe, for messages."""
    on = f" on {source}" if source else ""
    if not isinstance(text, str) or "=" not in text:
        raise RecipeError(f"override {text!r}{on} must look like key.path=value, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    try:
        return key.strip(), load_yaml(value)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RecipeError(f"--set {text}{on}: the value of '{key.strip()}', {value.strip()!r}, is not valid YAML "
                          f"({problem}); close brackets and quote strings, e.g. --set 'tta.modes=[none, hflip]' or "
                          f"--set 'name=\"a: b\"'") from None


def set_path(raw: dict, key: str, value: Any) -> dict:
    """A copy of the raw recipe dict with `key` (dotted) set to value."""
    raw = copy.deepcopy(raw)
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise RecipeError(f"cannot set {key!r}: {p!r} is not a section (it holds {_short(node[p])})")
        node = node[p]
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides, source: str = "<recipe>") -> dict:
    """raw with each override set: a dict {key: value}, pairs (key, value) or 'key=value' strings. Each key must
    be a recipe key and each value of its type, else a RecipeError naming the override and `source`."""
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for o in items:
        key, value = parse_override(o, source) if isinstance(o, str) else o
        where = f"--set {o}" if isinstance(o, str) else f"override {key}={_short(value)}"
        where += f" on {source}"
        _check_override(key, value, where)
        try:
            raw = set_path(raw, key, value)
        except RecipeError as e:  # the recipe holds a value where the key path needs a section
            raise RecipeError(f"{where}: {e}") from None
    return raw


def _check_override(key, value, where: str) -> None:
    """`key` names a recipe key (the same 'unknown key' message as in a file) and `value` has its type."""
    if not isinstance(key, str) or not key or not all(key.split(".")):
        raise RecipeError(f"{where}: {key!r} is not a key path; write section.key=value, e.g. train.lr=3e-4")
    parts, cls = key.split("."), Recipe
    for i, part in enumerate(parts):
        loc, rest = tuple(parts[:i + 1]), parts[i + 1:]
        if part not in cls.model_fields:
            raise RecipeError(_unknown_key(loc, list(cls.model_fields), where))
        if cls is SearchSpec and part == "params" and rest:
            raise RecipeError(_search_params_hint(".".join(rest), value, where))
        ann = cls.model_fields[part].annotation
        if rest and isinstance(ann, type) and issubclass(ann, Spec):
            cls = ann
            continue
        if rest:
            raise RecipeError(f"{where}: '{_key(loc)}' is a value, not a section; set it whole, "
                              f"e.g. --set '{_key(loc)}=...' (a list or mapping in YAML)")
        _check_plain(value, where, loc)
        try:  # the field's type, bounds and validators; a section (--set 'train={lr: 0.1}') replaces the file's
            cls.__pydantic_validator__.validate_assignment(cls.model_construct(), part, value)
        except ValidationError as e:
            raise RecipeError(_explain(e, where, loc[:-1])) from None


def _search_params_hint(rest: str, value, where: str) -> str:
    # search.params keys are recipe key paths themselves (train.lr): --set splits them at every dot
    field = rest.rsplit(".", 1)
    name, attr = (field[0], field[1]) if len(field) == 2 and field[1] in SearchParam.model_fields else (rest, None)
    body = f"{{{attr}: {_short(value)}, ...}}" if attr else "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
    return (f"{where}: search.params keys hold dots ({name}) and --set splits keys at dots, so it cannot reach "
            f"search.params.{rest}; write it in the recipe file: search: {{params: {{{name}: {body}}}}} "
            f"(or give the whole mapping: --set 'search.params={{{name}: {body}}}')")


def _spec_at(loc) -> type[Spec] | None:
    """The spec class that owns the key at `loc` (a pydantic error location)."""
    cls, parts = Recipe, list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if cls is SearchSpec and part == "params" and parts:
            parts.pop(0)  # the searched key's name
            cls = SearchParam
            continue
        ann = getattr(cls.model_fields.get(part), "annotation", None) if isinstance(part, str) else None
        if not (isinstance(ann, type) and issubclass(ann, Spec)):
            return None
        cls = ann
    return cls


def _without_union_tags(loc: tuple) -> tuple:
    """pydantic names the member of a Union field it tried (data.num_workers.literal['auto']); the user wrote
    data.num_workers."""
    cls, out, skip = Recipe, [], False
    for part in loc:
        if skip and isinstance(part, str):  # the member's tag
            skip = False
            continue
        skip = False
        out.append(part)
        field = cls.model_fields.get(part) if cls is not None and isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        cls = ann if isinstance(ann, type) and issubclass(ann, Spec) else None
        # Optional[X] is a Union too, but pydantic tags only unions of two or more types besides None
        skip = typing.get_origin(ann) is Union and len(set(typing.get_args(ann)) - {type(None)}) > 1
    return tuple(out)


def _explain(e: ValidationError, source: str, prefix: tuple = ()) -> str:
    lines: dict[str, list] = {}  # key -> [got, messages] (a Union field's members fail one by one: one line)
    for err in e.errors():
        loc = _without_union_tags(tuple(prefix) + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            cls = _spec_at(loc)
            lines[_unknown_key(loc, list(cls.model_fields) if cls else [], source)] = []
            continue
        got = "" if err["type"] in ("missing", "value_error") else f" (got {_short(err.get('input'))})"
        line = lines.setdefault(f"recipe key '{_key(loc)}' in {source}: ", [got])
        line.append(err["msg"].removeprefix("Value error, "))
    return "\n".join(k + (" or ".join(dict.fromkeys(v[1:])) + v[0] if v else "") for k, v in lines.items())
