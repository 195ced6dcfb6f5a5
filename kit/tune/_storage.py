"""The study: where it lives (storage URL, directory), its heartbeats, sampler and pruner."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from kit import metrics as M
from kit.recipe import Recipe, RecipeError, recipe_hash
from kit.tune._space import check_search_space

# Heartbeat of a running trial, in seconds; a trial silent for the grace period is failed and retried. The
# environment variables let tests and clusters choose without a recipe change (the recipe is the same everywhere).
HEARTBEAT_ENV, GRACE_ENV, RETRY_ENV = "KIT_TUNE_HEARTBEAT_S", "KIT_TUNE_GRACE_S", "KIT_TUNE_MAX_RETRY"
HEARTBEAT_S, MAX_RETRY = 60, 3  # the grace period defaults to 3 heartbeats: 3 missed beats mean a dead worker


def resolve_study_name(recipe: Recipe, study_name: str | None = None) -> str:
    return study_name or recipe.search.study_name or recipe.name


def study_dir(recipe: Recipe, study_name: str | None = None) -> Path:
    name = resolve_study_name(recipe, study_name)
    return recipe.run_dir if name == recipe.name else recipe.run_dir / "studies" / name


def resolve_storage(recipe: Recipe, storage: str | None = None) -> str:
    """--storage, else search.storage, else runs/<name>/study.sqlite. A plain path means a SQLite file. A URL comes
    back without its password (kit.dburl keeps it for open_storage): safe to print and to store."""
    from kit.dburl import without_password
    url = storage or recipe.search.storage or str(recipe.run_dir / "study.sqlite")
    if "://" in url:
        try:
            return without_password(url)
        except ValueError as e:
            raise RecipeError(f"--storage: {e}") from None
    path = Path(url).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class Heartbeat:
    interval_s: int  # a running trial writes a beat this often
    grace_s: int  # no beat for this long: its worker is dead, the trial fails and is re-queued
    max_retry: int  # re-queued at most this many times


def resolve_heartbeat(interval_s=None, grace_s=None, max_retry=None) -> Heartbeat:
    """Arguments, else $KIT_TUNE_HEARTBEAT_S, $KIT_TUNE_GRACE_S, $KIT_TUNE_MAX_RETRY, else 60 s, 3 beats, 3."""
    interval_s = int(interval_s or os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S))
    grace_s = int(grace_s or os.environ.get(GRACE_ENV, 3 * interval_s))
    max_retry = int(max_retry if max_retry is not None else os.environ.get(RETRY_ENV, MAX_RETRY))
    return Heartbeat(interval_s, grace_s, max_retry)


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats: a trial whose worker stops beating is failed and re-queued. `url` without its
    password: kit.dburl merges it back to connect, and every message masks it."""
    from kit.dburl import connect_url, mask
    hb = heartbeat or resolve_heartbeat()
    try:
        secret_url, url = connect_url(url), mask(url)
    except ValueError as e:
        raise RecipeError(f"study storage: {e}") from None
    # pool_pre_ping: a worker that waited hours on a trial finds its database connection dropped, and reconnects.
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # s; the heartbeat thread and the trial write the same file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        try:
            if retry is not None:  # Optuna >= 4.9 names it so
                return optuna.storages.RDBStorage(secret_url, engine_kwargs=engine, heartbeat_interval=hb.interval_s,
                                                  grace_period=hb.grace_s,
                                                  heartbeat_stale_trial_callback=retry(max_retry=hb.max_retry))
            return optuna.storages.RDBStorage(secret_url, engine_kwargs=engine, heartbeat_interval=hb.interval_s,
                                              grace_period=hb.grace_s, failed_trial_callback=
                                              optuna.storages.RetryFailedTrialCallback(max_retry=hb.max_retry))
        except ImportError as e:
            raise RecipeError(mask(f"storage {url}: {_first_line(e)}; install the database's driver (PostgreSQL: "
                                   f"pip install psycopg2-binary)")) from None
        except Exception as e:  # sqlalchemy: unreachable server, bad URL, bad credentials, no such dialect
            raise RecipeError(mask(f"cannot open the study storage {url}: {type(e).__name__}: {_first_line(e)}; "
                                   f"check the URL, that the server is up, and the credentials (the password comes "
                                   f"from $KIT_DB_PASSWORD or $PGPASSWORD)")) from None


def _first_line(e: Exception) -> str:
    cause = getattr(e, "orig", None) or e
    return " ".join(str(cause).split())[:300]


def create_study(recipe: Recipe, storage: str | None = None, study_name: str | None = None, *, sampler=None,
                 pruner=None, heartbeat: Heartbeat | None = None) -> optuna.Study:
    """Check the search space, then create the study, or load it (resume, or another worker's) if it exists.
    `sampler` and `pruner` replace the ones search.sampler / search.pruner name."""
    from kit.context import with_resolved_metric
    check_search_space(recipe)
    recipe = with_resolved_metric(recipe)
    name = resolve_study_name(recipe, study_name)
    url = resolve_storage(recipe, storage)
    metric = recipe.train.metric
    study = optuna.create_study(
        storage=open_storage(url, heartbeat), study_name=name, load_if_exists=True,
        direction="maximize" if M.get_metric(metric).higher_is_better else "minimize",
        sampler=sampler or create_sampler(recipe), pruner=pruner or create_pruner(recipe))
    h, attrs = recipe_hash(recipe), study.user_attrs
    if attrs.get("recipe_hash", h) != h:
        raise RecipeError(f"study {name!r} in {url} was made for another recipe ({attrs.get('recipe_name')}, hash "
                          f"{attrs['recipe_hash']}; this one {h}); every worker must run the same recipe, or "
                          f"start a new study with --study NAME")
    if "recipe_hash" not in attrs:
        for k, v in {"recipe_hash": h, "recipe_name": recipe.name, "metric": metric}.items():
            study.set_user_attr(k, v)
    old = sorted((study_dir(recipe, name) / "trials").glob("trial_*"))
    if old and not study.trials:
        raise RecipeError(f"{old[0].parent} holds {len(old)} trial directories, but study {name!r} in {url} has no "
                          f"trials: they belong to an earlier study. Remove them, or use --study NAME")
    return study


def create_sampler(recipe: Recipe) -> optuna.samplers.BaseSampler:
    s = recipe.search
    if s.sampler == "qmc":  # the sequence's position lives in the storage: one seed for every worker
        return optuna.samplers.QMCSampler(seed=s.seed, scramble=True, warn_independent_sampling=False)
    make = {"tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
            "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
            "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)}
    return _TrialSeeded(make[s.sampler], s.seed)


class _TrialSeeded(optuna.samplers.BaseSampler):
    """The sampler made afresh for each trial, seeded with search.seed + the trial's number. A sampler seeded once
    per process would draw the same values in every worker of a shared study, and again on each resume; seeded by
    trial number, a study repeats exactly on one worker and never repeats itself across workers."""

    def __init__(self, make, seed: int):
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study, trial):
        self._inner = self._make(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self._inner.reseed_rng()


MEDIAN_STARTUP_TRIALS = 2  # finished trials before the median pruner stops any (see create_pruner)


def create_pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    kind, epochs = recipe.search.pruner, recipe.train.epochs
    if kind == "median":
        # Not during the lr warm-up (TrainSpec.warmup): every trial looks alike there.
        warmup = min(math.ceil(recipe.train.warmup), epochs - 1)
        # Two finished trials before pruning (not Optuna's 5): TPE's first 10 trials are random, and waiting for 5 of
        # them trains 5 whole trials before any is stopped. benchmarks/bench_tune.py, 20 trials x 8 epochs, two TPE
        # seeds: 5 trials 107 / 97 epochs of 160 (33 % / 39 % saved), 2 trials 81 / 89 (49 % / 44 %), every study
        # finding the same best (0.9875); a longer warm-up saved less (1-2 epochs: 134 of 160)
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()
