"""The Recipe, a whole run's spec (its sections are in kit.recipe._specs), and the recipe each entry of
ensemble.backbones makes of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import field_validator

from kit.recipe._specs import (AugmentSpec, DataSpec, DistillSpec, EnsembleSpec, ModelSpec, PseudoSpec, SearchSpec,
                               Spec, SubmitSpec, TrainSpec, TTASpec)


class Recipe(Spec):
    name: str = "recipe"
    output_dir: str = "runs"  # runs land in output_dir/name
    leaderboard: Optional[str] = None  # SQLAlchemy URL; default leaderboard/leaderboard.sqlite
    data: DataSpec = DataSpec()
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
        from kit.recipe._load import apply_overrides, recipe_from_dict  # _load validates into Recipe: imported here
        raw = apply_overrides(self.to_dict(), overrides, source=source)
        return recipe_from_dict(raw, source=source)
        return recipe_from_dict(raw, source=source)
def backbone_overrides(over: dict) -> dict:
    """ensemble.backbones[i] ({section: {key: value}}) as dotted overrides {"section.key": value}."""
    return {f"{section}.{k}": v for section, values in over.items() for k, v in (values or {}).items()}


def backbone_recipe(recipe: Recipe, i: int, source: str = "<recipe>") -> Recipe:
    """The recipe of ensemble.backbones[i]: the run's recipe with that entry's overrides, as one member sees it
    (its ensemble section reset: a member is not an ensemble)."""
    over = dict(backbone_overrides(recipe.ensemble.backbones[i]), ensemble=EnsembleSpec().model_dump())
    return recipe.with_overrides(over, source=f"{source} (ensemble.backbones[{i}])")

