"""A recipe: the YAML file that drives a whole run, loaded into typed, frozen specs.

Defaults live here and only here (the spec classes); a recipe file states what differs. Unknown keys, wrong types
and missing paths fail in `load_recipe`, before any work starts, with the file, the key and the fix.

    _specs    the sections (DataSpec, ModelSpec, TrainSpec, ...): defaults and bounds of every key
    _checks   what pydantic cannot check one field at a time and needs nothing built: plain YAML values, paths,
              timm model names, albumentations class names, search spaces (stages and transform parameters are
              checked by the plan, at the model's real input size)
    _recipe   Recipe, the whole run's spec; recipe_from_dict, overrides, recipe_hash, pydantic's errors explained;
              backbone_recipe, an ensemble.backbones entry's recipe
    _load     read_yaml, load_recipe: a recipe file
"""
from __future__ import annotations

from kit.errors import RecipeError  # re-exported: kit.recipe.RecipeError
from kit.recipe._checks import MAX_DEPTH, MAX_TEXT, MAX_VALUES, usable_transform
from kit.recipe._load import MAX_FILE_BYTES, load_recipe, read_yaml
from kit.recipe._recipe import (NOT_CONFIG_KEYS, SEED_KEYS, UNHASHED_KEYS, Recipe, apply_overrides, backbone_overrides,
                                backbone_recipe, drop_keys, parse_override, recipe_from_dict, recipe_hash, set_path)
from kit.recipe._specs import (BLEND_METHODS, DEVICES, LR_BY_STRATEGY, MAX_DIGITS_SIDE, MAX_SIDE, N_DIGITS,
                               TTA_DEFAULT_SCALES, TTA_MERGES, TTA_MODES, AugmentSpec, DataSpec, DistillSpec,
                               EnsembleSpec, ModelSpec, PseudoSpec, SearchParam, SearchSpec, Seed, Spec, SubmitSpec,
                               TASK_KINDS, TaskSpec, TrainSpec, TTASpec)

__all__ = [
    "AugmentSpec", "BLEND_METHODS", "DEVICES", "DataSpec", "DistillSpec", "EnsembleSpec", "LR_BY_STRATEGY",
    "MAX_DEPTH", "MAX_DIGITS_SIDE", "MAX_FILE_BYTES", "MAX_SIDE", "MAX_TEXT", "MAX_VALUES", "ModelSpec",
    "NOT_CONFIG_KEYS", "N_DIGITS", "PseudoSpec", "Recipe", "RecipeError", "SEED_KEYS", "SearchParam", "SearchSpec", "Seed", "Spec",
    "SubmitSpec", "TASK_KINDS", "TaskSpec", "TTASpec", "TTA_DEFAULT_SCALES", "TTA_MERGES", "TTA_MODES", "TrainSpec", "UNHASHED_KEYS",
    "apply_overrides", "backbone_overrides", "backbone_recipe", "drop_keys", "load_recipe", "parse_override",
    "read_yaml", "recipe_from_dict", "recipe_hash", "set_path", "usable_transform",
]
