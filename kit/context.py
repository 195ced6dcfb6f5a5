"""Opening a run: its data loaded and checked, its plan made (or reloaded), its split, and the run directory
written; which members are done; the saved recipe of a run directory.

    ctx = prepare_run(recipe)          # data loaded and checked, plan made (or reloaded), run directory written
    member_done(ctx.run_dir, member)   # its done.json record, or None
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import RecipeError, RunDirError
from kit.plan import PLAN_FILE, MemberPlan, RunPlan, check_recipe_models, check_same_recipe, plan_run, save_plan
from kit.recipe import Recipe
from kit.readers import read_json
from kit.rundir import member_dir, write_if_changed


@dataclass
class RunContext:
    plan: RunPlan
    run_dir: Path
    sources: object  # kit.data.Sources (bad images already dropped under data.bad_images: skip)
    folds: np.ndarray  # fold of each labelled image (-1: always trains, holdout)
    bad_images: list  # images left out (data.bad_images: skip)

    @property
    def recipe(self) -> Recipe:
        return self.plan.recipe

    @property
    def task(self):
        """What the target is (kit.task.Task), as the plan resolved it."""
        return self.plan.task


def select_members(members: list[MemberPlan], spec: str | None) -> list[MemberPlan]:
    """'3', '0-4', '1,5,7' or None (all): what `kit train --member` takes, e.g. from a job array index."""
    if spec is None:
        return list(members)
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


def load_checked_sources(recipe: Recipe):
    """The data of the recipe, every image path inside its root and every image scanned (kit.data.scan):
    (sources, bad images left out under data.bad_images: skip)."""
    from kit.data import load_sources
    from kit.data.scan import apply_bad_images, scan_sources
    sources = load_sources(recipe.data, recipe.task)
    bad = scan_sources(sources)
    return apply_bad_images(sources, bad, recipe.data.bad_images, where=f"the recipe of {recipe.name}"), bad


def with_resolved_metric(recipe: Recipe) -> Recipe:
    """`recipe` with train.metric: auto resolved as the plan resolves it (kit.task: the target's kind decides), for
    what needs the metric before any run is planned (a study's direction); the data is read for it."""
    if recipe.train.metric != "auto":
        return recipe
    from kit.data import load_sources
    from kit.task import resolve_task
    task = resolve_task(load_sources(recipe.data, recipe.task).task, recipe.task, "auto")
    return recipe.with_overrides({"train.metric": task.metric}, source=f"the metric of {recipe.name}")


def prepare_run(recipe: Recipe, *, write: bool = True) -> RunContext:
    """Open the run directory of `recipe`: refuse another recipe's run, load and check the data, make (or reload)
    the plan and the split, and only then write recipe.yaml, recipe.hash, plan.json and folds.csv, so that a
    recipe that fails on its data locks nothing. write=False: open a run another process has just written (the
    ranks of torchrun but the first), writing nothing."""
    from kit.data import load_folds, make_folds, save_folds
    import yaml
    from kit.data import attach_decoded_cache, decoded_max_side
    check_same_recipe(recipe, _saved_hash(recipe.run_dir))
    check_recipe_models(recipe)  # before the data is read: a bad transform or stage fails in seconds
    sources, bad = load_checked_sources(recipe)
    plan = plan_run(recipe, sources)
    # every image decoded once into a memory-mapped store (kit.data.cache), at most the size the plan needs
    sources = attach_decoded_cache(sources, max_side=decoded_max_side(plan))
    run_dir = recipe.run_dir
    folds_file = run_dir / "folds.csv"
    if folds_file.exists():
        ids, _, folds = load_folds(folds_file)
        if list(ids) != list(sources.train.ids):
            raise RunDirError(f"{folds_file} was made for other images than data.* now gives; "
                              f"the data changed under this run: use a new run name")
    elif recipe.distill.teacher:  # a student validates on exactly the teacher's folds (kit.pseudo's rule)
        folds = _teacher_folds(recipe, sources)
    else:
        folds = make_folds(sources.train.labels, recipe.data, classes=sources.train.classes,
                           groups=sources.train.groups)
    if not write:
        return RunContext(plan, run_dir, sources, np.asarray(folds), bad)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {run_dir} ({e.strerror or e}); set output_dir to a "
                          f"folder you can write") from None
    # each written only when its content changes: a command with nothing new (kit submit, kit predict --tta on
    # predicted modes) writes nothing, and works on a run directory it can only read
    if _recipe_changed(run_dir / "recipe.yaml", recipe):
        write_if_changed(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    write_if_changed(run_dir / "recipe.hash", plan.recipe_hash + "\n")
    if not (run_dir / PLAN_FILE).exists():
        save_plan(plan, run_dir / PLAN_FILE)
    if not folds_file.exists():
        save_folds(folds_file, sources.train.ids, sources.train.labels, folds)
    if bad:
        _write_bad_images(run_dir / "bad_images.csv", bad)
    return RunContext(plan, run_dir, sources, np.asarray(folds), bad)


def _recipe_changed(path: Path, recipe: Recipe) -> bool:
    """Whether recipe.yaml would say something new. Where the run directory lies (output_dir) is not news: a
    moved or copied run (a teammate's, mounted read-only) is read where it is (load_run_recipe)."""
    import yaml
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return True
    now = recipe.to_dict()
    return not isinstance(saved, dict) or {**saved, "output_dir": None} != {**now, "output_dir": None}


def _teacher_folds(recipe: Recipe, sources) -> np.ndarray:
    from kit.data import load_folds
    path = Path(recipe.distill.teacher) / "folds.csv"
    if not path.is_file():
        raise RunDirError(f"distill.teacher {recipe.distill.teacher} is not a finished run ({path} is missing)")
    ids, _, folds = load_folds(path)
    if list(ids) != list(sources.train.ids):
        raise RunDirError(f"distill.teacher {recipe.distill.teacher} was trained on other labelled images than "
                          f"data.* gives here; distil with the teacher's data")
    return folds


def _write_bad_images(path: Path, bad: list) -> None:
    import csv
    import io
    from dataclasses import asdict, is_dataclass
    rows = [asdict(b) if is_dataclass(b) else dict(b) for b in bad]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_if_changed(path, buf.getvalue())


# done.json, a finished member's record (kit.member_train writes it): what its readers use, checked on reading
DONE_SCHEMA = {"member": str, "seed": int, "fold": int, "backbone": str, "strategy": str, "epochs": int,
               "best_epoch": (int, type(None)), "wall_time_s": (int, float), "device": str,
               "scores": {"*": {"*": (int, float)}}, "refit_of?": (str, type(None))}


def member_done(run_dir, member: MemberPlan) -> dict | None:
    """The done.json record of a finished member, or None; a corrupt or foreign one is an UnsafeFileError."""
    f = member_dir(run_dir, member.name) / "done.json"
    if not f.exists():
        return None
    return read_done(f, member.name)


def read_done(path: Path, name: str) -> dict:
    fix = f"remove {path.parent} to train member {name} again"
    rec = read_json(path, fix=fix, schema=DONE_SCHEMA)
    if rec["member"] != name:
        from kit.errors import UnsafeFileError
        raise UnsafeFileError(f"{path} is the record of member {rec['member']!r}, not of {name!r}; {fix}")
    return rec


def learns_from_teacher(member: MemberPlan) -> bool:
    """A pseudo-label round after the first, or a distilled student: its targets come from kit.pseudo."""
    return member.round > 0 or member.recipe.distill.teacher is not None


def _saved_hash(run_dir: Path) -> str | None:
    """The hash in recipe.hash (16 hex digits), or None without one; UnsafeFileError for anything else."""
    import re
    from kit.errors import UnsafeFileError
    f = Path(run_dir) / "recipe.hash"
    if not f.is_file():
        return None
    with open(f, "rb") as fh:
        text = fh.read(64).decode("ascii", errors="replace").strip()
    if not re.fullmatch(r"[0-9a-f]{16}", text):
        raise UnsafeFileError(f"{f} does not hold a recipe hash (16 hex digits); restore it, or remove it if "
                              f"recipe.yaml is the recipe this run was made with (kit writes it again)")
    return text


def load_run_recipe(run_dir, overrides=()) -> Recipe:
    """The resolved recipe saved in a run directory, pointing at that directory wherever it is called from
    (its output_dir may be relative to where the run started)."""
    from kit.recipe import load_recipe
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no recipe.yaml); pass runs/<name> or a recipe file")
    recipe = load_recipe(recipe_file, [("output_dir", str(run_dir.parent)), *overrides])  # output_dir: not hashed
    if recipe.name != run_dir.name:
        raise RunDirError(f"{run_dir} holds the run named {recipe.name!r} (its recipe.yaml); "
                          f"rename the folder back to {recipe.name}")
    return recipe


def load_recipe_or_run(path, overrides=()) -> Recipe:
    """What every command that takes a recipe takes: a recipe file, or a run directory (its saved recipe)."""
    from kit.recipe import load_recipe
    p = Path(path)
    if p.is_dir():
        return load_run_recipe(p, overrides)
    return load_recipe(p, overrides)
