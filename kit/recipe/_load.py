"""Reading a recipe file: YAML, then `key=value` overrides, then validation into the Recipe (kit.recipe._recipe).

    recipe = load_recipe("recipes/quickstart.yaml", ["train.lr=3e-4"])   # a RecipeError names file, key and fix
"""
from __future__ import annotations

from pathlib import Path

import yaml

from kit.errors import RecipeError
from kit.recipe._checks import _check_plain, _is_dir, _is_file, load_yaml
from kit.recipe._recipe import Recipe, apply_overrides, recipe_from_dict


MAX_FILE_BYTES = 1_000_000  # bytes: a recipe is a few KB of YAML


def read_yaml(path) -> dict:
    """The recipe file as a mapping ({} when the file is empty or holds only comments)."""
    path = Path(path)
    if not _is_file(path):
        raise RecipeError(f"recipe file {path} does not exist" + (" (it is a folder)" if _is_dir(path) else ""))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RecipeError(f"recipe file {path} is {size:,} bytes; a recipe is a few KB of YAML "
                              f"(at most {MAX_FILE_BYTES:,}): is it the right file?")
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"cannot read recipe file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except RecursionError:
        raise RecipeError(f"{path} is nested too deeply to read; a recipe is a few levels of sections") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a YAML {type(raw).__name__}")
    _check_plain(raw, str(path))
    return raw


def load_recipe(path, overrides=()) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, validate everything that can be checked up front."""
    raw = read_yaml(path)
    stated = bool(raw)
    raw.setdefault("name", Path(path).stem)
    recipe = recipe_from_dict(apply_overrides(raw, overrides, source=str(path)), source=str(path))
    if not stated:  # refused after the overrides are checked, so that their mistakes are reported first
        raise RecipeError(f"recipe file {path} is empty (or holds only comments): it would train every default "
                          f"without saying so. A recipe states at least its data, e.g. `data: {{source: imagefolder, "
                          f"root: path/to/images}}`, or `data: {{source: digits}}` for the built-in digits (see "
                          f"recipes/quickstart.yaml); every other key has a default (kit/recipe/_specs.py)")
    return recipe


