"""kit: transfer learning for image competitions, from one recipe.

    import kit
    summary = kit.run("recipes/quickstart.yaml")   # train, predict with TTA, blend, submit (kit.run.run)
    ens = kit.load("runs/quickstart")               # a finished run, or a bundle from `kit export` (kit.inference)
    ens.predict(["a.png", "b.png"])                 # class probabilities, one row per image

`import kit` imports no torch: kit.load and kit.run import what they need when they are first used.
"""
from __future__ import annotations

import sys
import types

from kit.version import __version__  # noqa: F401


def load(path):
    """The kit.inference.Ensemble of a finished run directory or of a bundle folder / .zip (kit export)."""
    from kit.inference import load as load_ensemble
    return load_ensemble(path)


class _RunModule(types.ModuleType):
    """The module kit.run, callable: kit.run("recipe.yaml") runs a recipe file or a run directory.

    `kit.run` has to be the module (`from kit import run as R; R.finish(...)`, `import kit.run`), and Python binds
    a submodule to its package's attribute of the same name once it is imported, so a plain function named `run`
    here would be replaced by the module at the first `import kit.run`; the module is given a __call__ instead."""

    def __call__(self, recipe, overrides=(), **kwargs):
        """kit.run.run(kit.run.load_recipe_or_run(recipe, overrides), **kwargs): the run's Summary."""
        return self.run(self.load_recipe_or_run(recipe, overrides), **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name == "run" and type(value) is types.ModuleType:  # the import system binding kit.run
            value.__class__ = _RunModule
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name == "run":  # kit.run before anything imported it: importing binds it (see _Package)
        import importlib
        return importlib.import_module("kit.run")
    raise AttributeError(f"module 'kit' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
