"""Hyperparameter search: an Optuna study whose trials are training runs of the recipe, with pruning.

    kit tune recipes/quickstart_tune.yaml --trials 20        # study in runs/<name>/study.sqlite; rerun to resume
    optuna-dashboard sqlite:///runs/<name>/study.sqlite      # watch it (pip install optuna-dashboard)

Many workers on many machines share one study through a database all of them reach:

    kit tune R --create-only --storage postgresql+psycopg2://u:p@host/db --study s   # once, before the workers
    kit tune R --trials 100 --total 40 --storage postgresql+psycopg2://u:p@host/db --study s   # on every machine

The first worker would create the study too (load_if_exists), but workers that start at once on an empty database
race to create its tables, so create it first. Each running trial sends a heartbeat ($KIT_TUNE_HEARTBEAT_S, 60 s);
one silent for the grace period ($KIT_TUNE_GRACE_S, 3 beats) is failed and re-queued with the same parameters under
a new number (so a new directory) by the next worker that starts a trial, or by a worker about to leave, which
waits up to the grace period for the trials still running. --trials counts this worker's trials; --total stops
every worker once the study has that many finished (complete or pruned) trials.

A trial is the recipe with the sampled `search.params` keys set (`set_path`), trained as one member: the fold
`search.fold` (0 for a holdout) with the first of ensemble.seeds (and the first of ensemble.backbones), in its own
run directory. Its validation score reaches the pruner through fit's `on_epoch_end` hook, which raises
optuna.TrialPruned to stop it: the trainer knows nothing of Optuna. Feature-extraction recipes
(model.strategy: feature_extract) tune their heads over kit.features' embedding cache, which train_member uses on
its own: trials after the first don't recompute the embeddings.

runs/<name>/                     (runs/<name>/studies/<study>/ for a --study other than the recipe's name)
  study.sqlite                   the default storage (one file for all studies of the recipe)
  trials/trial_NNNN/             each trial's run directory: recipe.yaml, members/<member>/ (history.csv, preds/)
  best.yaml                      the recipe with the best trial's values, named <name>-best: `kit run` takes it
  top_k.json                     the search.top_k best trials: run dirs, params, prediction files (see blend_top_k)
  optimization_history.png, param_importances.png
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from kit import metrics as M
from kit.recipe import Recipe, RecipeError, SearchParam, recipe_from_dict, recipe_hash, set_path
from kit.rundir import pred_path, write_json_atomic, write_text_atomic

# Heartbeat of a running trial, in seconds; a trial silent for the grace period is failed and retried. The
# environment variables let tests and clusters choose without a recipe change (the recipe is the same everywhere).
HEARTBEAT_ENV, GRACE_ENV, RETRY_ENV = "KIT_TUNE_HEARTBEAT_S", "KIT_TUNE_GRACE_S", "KIT_TUNE_MAX_RETRY"
HEARTBEAT_S, MAX_RETRY = 60, 3  # the grace period defaults to 3 heartbeats: 3 missed beats mean a dead worker
_PRIMITIVE = (type(None), bool, int, float, str)  # what Optuna stores as a categorical choice


# ---------------------------------------------------------------- the search space

def check_search_space(recipe: Recipe) -> None:
    """Fail before the study starts if a searched value could not make a valid recipe, naming the key."""
    s, where = recipe.search, f"recipe {recipe.name!r}"
    if not s.params:
        raise RecipeError(f"recipe key 'search.params' in {where}: nothing to search; add e.g. search: {{params: "
                          f"{{train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}}}}}")
    folds = recipe.data.folds if recipe.data.split == "kfold" else 1
    if s.fold >= folds:
        raise RecipeError(f"recipe key 'search.fold' in {where}: fold {s.fold} does not exist; data.split="
                          f"{recipe.data.split} has folds 0..{folds - 1}")
    if s.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise RecipeError(f"recipe key 'search.sampler' in {where}: cmaes needs the cmaes package: "
                              f"pip install cmaes (or use tpe, random, qmc)") from None
    first = recipe.ensemble.backbones[0] if recipe.ensemble.backbones else {}
    for key, p in s.params.items():
        fail = _failer(f"search.params.{key}", where)
        section, _, rest = key.partition(".")
        if rest in first.get(section, {}):
            fail(f"ensemble.backbones[0] sets {key} too, and trials train that backbone: the sampled value "
                 f"would be overridden; remove it from one of them")
        if p.type == "categorical":
            bad = [c for c in p.choices if not isinstance(c, _PRIMITIVE)]
            if bad:
                fail(f"choices must be numbers, strings, booleans or null (Optuna stores them); got {bad[0]!r}")
        else:
            if p.log and p.step is not None:
                fail("step and log cannot be combined; drop one")
            if p.type == "int" and any(v is not None and v != int(v) for v in (p.low, p.high, p.step)):
                fail(f"type int needs whole low, high and step; got low={p.low}, high={p.high}, step={p.step}")
        for label, value in _extremes(p):
            try:
                recipe_from_dict(set_path(recipe.to_dict(), key, value), source=where)
            except RecipeError as e:
                fail(f"its {label} {value!r} makes an invalid recipe: {e}")


def _failer(key: str, where: str):
    def fail(msg):
        raise RecipeError(f"recipe key '{key}' in {where}: {msg}")
    return fail


def _extremes(p: SearchParam) -> list[tuple[str, object]]:
    if p.type == "categorical":
        return [(f"choice {i}", c) for i, c in enumerate(p.choices)]
    cast = int if p.type == "int" else float
    return [("low", cast(p.low)), ("high", cast(p.high))]


def suggest(trial: optuna.Trial, params: dict[str, SearchParam]) -> dict:
    """Ask the trial for a value of every searched key (the key path is the Optuna parameter name)."""
    out = {}
    for key, p in params.items():
        if p.type == "float":
            out[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[key] = trial.suggest_categorical(key, p.choices)
    return out


def trial_recipe(recipe: Recipe, params: dict, number: int, study_name: str | None = None) -> Recipe:
    """The recipe of one trial: the sampled values set, one seed, its own run directory trial_NNNN."""
    raw = recipe.to_dict()
    for key, value in params.items():
        raw = set_path(raw, key, value)
    raw["name"] = f"trial_{number:04d}"
    raw["output_dir"] = str(study_dir(recipe, study_name) / "trials")
    raw["ensemble"]["seeds"] = (raw["ensemble"]["seeds"] or [raw["train"]["seed"]])[:1]
    return recipe_from_dict(raw, source=f"trial {number} of recipe {recipe.name!r}")


# ---------------------------------------------------------------- the study

def resolve_study_name(recipe: Recipe, study_name: str | None = None) -> str:
    return study_name or recipe.search.study_name or recipe.name


def study_dir(recipe: Recipe, study_name: str | None = None) -> Path:
    name = resolve_study_name(recipe, study_name)
    return recipe.run_dir if name == recipe.name else recipe.run_dir / "studies" / name


def resolve_storage(recipe: Recipe, storage: str | None = None) -> str:
    """--storage, else search.storage, else runs/<name>/study.sqlite. A plain path means a SQLite file."""
    url = storage or recipe.search.storage or str(recipe.run_dir / "study.sqlite")
    if "://" in url:
        return url
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
    """An RDBStorage with heartbeats: a trial whose worker stops beating is failed and re-queued."""
    hb = heartbeat or resolve_heartbeat()
    # pool_pre_ping: a worker that waited hours on a trial finds its database connection dropped, and reconnects.
    engine = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # s; the heartbeat thread and the trial write the same file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        try:
            if retry is not None:  # Optuna >= 4.9 names it so
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=hb.interval_s,
                                                  grace_period=hb.grace_s,
                                                  heartbeat_stale_trial_callback=retry(max_retry=hb.max_retry))
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=hb.interval_s,
                                              grace_period=hb.grace_s, failed_trial_callback=
                                              optuna.storages.RetryFailedTrialCallback(max_retry=hb.max_retry))
        except ImportError as e:
            raise RecipeError(f"storage {url}: {e}; for PostgreSQL: pip install psycopg2-binary") from None
        except Exception as e:  # sqlalchemy: unreachable server, bad URL, bad credentials
            raise RecipeError(f"cannot open the study storage {url}: {type(e).__name__}: {e}") from None


def create_study(recipe: Recipe, storage: str | None = None, study_name: str | None = None, *, sampler=None,
                 pruner=None, heartbeat: Heartbeat | None = None) -> optuna.Study:
    """Check the search space, then create the study, or load it (resume, or another worker's) if it exists.
    `sampler` and `pruner` replace the ones search.sampler / search.pruner name."""
    check_search_space(recipe)
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


def create_pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    kind, epochs = recipe.search.pruner, recipe.train.epochs
    if kind == "median":
        # Not during the lr warmup (train.warmup_epochs, 1 by default): every trial looks alike there.
        warmup = min(math.ceil(recipe.train.warmup_epochs), epochs - 1)
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- trials

def _objective(recipe: Recipe, name: str):
    from kit.members import chosen_tta, expand_members, prepare_run, train_member
    metric = recipe.train.metric

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = suggest(trial, recipe.search.params)
            r = trial_recipe(recipe, params, trial.number, name)
            trial.set_user_attr("run_dir", str(r.run_dir))
            ctx = prepare_run(r)
            member = expand_members(r, [r.search.fold])[0]  # first backbone, first seed, the searched fold

            def report(epoch: int, row: dict) -> None:
                trial.report(row[f"val_{metric}"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val {metric} {row[f'val_{metric}']:.4f} at epoch {epoch + 1}")

            rec = train_member(ctx, member, resume=False, on_epoch_end=report)
        except optuna.TrialPruned:
            raise
        except BaseException as e:
            trial.set_user_attr("fail_reason", _fail_reason(e))
            raise
        tta = chosen_tta(r, [rec])
        trial.set_user_attr("member", member.name)
        trial.set_user_attr("tta", tta)
        trial.set_user_attr("scores", rec["scores"][tta])
        trial.set_user_attr("device", rec["device"])
        value = rec["scores"][tta][metric]
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"validation {metric} is {value}")
        return value  # NaN: Optuna fails the trial and goes on
    return objective


def _fail_reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    import torch
    if isinstance(e, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        torch.cuda.empty_cache()  # the next trial starts from an empty cache
        return (f"out of GPU memory ({str(e).splitlines()[0]}); search smaller train.batch_size or "
                f"augment.input_size, or set train.accum_steps")
    return f"{type(e).__name__}: {e}"[:2000]


def _after_trial(recipe: Recipe, name: str, log, env: dict):
    """Study callback: tidy the trial's directory, record it on the leaderboard, log one line."""
    metric = recipe.train.metric

    def callback(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        run_dir = Path(t.user_attrs.get("run_dir", study_dir(recipe, name) / "trials" / f"trial_{t.number:04d}"))
        # Checkpoints: last.pt only resumes an unfinished member; a stopped trial is never resumed (a retry gets
        # a new number), so only complete trials keep best.pt, for kit predict with more TTA modes.
        for f in run_dir.glob("members/*/*.pt"):
            if f.name == "last.pt" or t.state != TrialState.COMPLETE:
                f.unlink(missing_ok=True)
        epochs = len(t.intermediate_values)
        value = f"{t.value:.4f}" if t.value is not None else t.user_attrs.get("fail_reason", "")
        log(f"trial {t.number} {t.state.name.lower()} after {epochs} epochs: {metric} {value}  "
            + " ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
        try:
            _record_trial(recipe, name, t, run_dir, env)
        except Exception as e:  # the leaderboard is a record of the study, not a reason to stop it
            log(f"trial {t.number}: not recorded on the leaderboard: {type(e).__name__}: {e}")
    return callback


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _record_trial(recipe: Recipe, name: str, t, run_dir: Path, env: dict) -> None:
    from kit.leaderboard import Entry, record
    r = trial_recipe(recipe, t.params, t.number, name)
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    extra = {"trial": t.number, "params": t.params, "state": t.state.name.lower(), "study": name,
             "fold": r.search.fold, "epochs": len(t.intermediate_values)}
    if "fail_reason" in t.user_attrs:
        extra["fail_reason"] = t.user_attrs["fail_reason"]
    entry = Entry(kind="trial", name=f"trial_{t.number}", metric=recipe.train.metric,
                  score=t.value if t.state == TrialState.COMPLETE else None, scores=t.user_attrs.get("scores", {}),
                  recipe_name=recipe.name, recipe_hash=recipe_hash(r), recipe=r.to_dict(),
                  backbone=r.model.backbone, strategy=r.model.strategy, seed=r.seeds[0],
                  fold_scheme=f"kfold{r.data.folds}" if r.data.split == "kfold" else "holdout",
                  tta_mode=t.user_attrs.get("tta"), run_dir=str(run_dir), wall_time_s=duration,
                  device=t.user_attrs.get("device"), versions=env.get("versions", {}),
                  git_commit=env.get("git_commit"), extra=extra)
    record([entry], url=recipe.leaderboard)


# ---------------------------------------------------------------- tune

def tune(recipe: Recipe, n_trials: int | None = None, timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, log=print, *, total: int | None = None, sampler=None, pruner=None,
         heartbeat_s=None, grace_s=None, max_retry=None) -> optuna.Study:
    """Run n_trials (default search.trials) trials in this process, at most `timeout` seconds, stopping early once
    the study holds `total` finished trials; then write best.yaml, top_k.json and the plots. Trials that raise or
    score NaN fail and the study goes on; Ctrl-C stops it (run again to resume)."""
    heartbeat = resolve_heartbeat(heartbeat_s, grace_s, max_retry)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours (_after_trial)
    try:
        study = create_study(recipe, storage, study_name, sampler=sampler, pruner=pruner, heartbeat=heartbeat)
        _optimize(study, recipe, n_trials, timeout, total, log, heartbeat)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study


def _optimize(study: optuna.Study, recipe: Recipe, n_trials: int | None, timeout, total: int | None, log,
              heartbeat: Heartbeat) -> None:
    from kit.leaderboard import environment
    name = study.study_name
    n_trials = recipe.search.trials if n_trials is None else n_trials
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    objective, record = _objective(recipe, name), _after_trial(recipe, name, log, environment())
    callbacks = [record]
    if total is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(total, states=done))
    log(f"study {name!r}: {len(study.trials)} trials so far; running {n_trials} more"
        + (f" (until {total} finished)" if total is not None else "")
        + f"; trial directories in {study_dir(recipe, name) / 'trials'}")
    try:
        if total is None or len(study.get_trials(deepcopy=False, states=done)) < total:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,),
                           callbacks=callbacks, gc_after_trial=True)
        _retry_dead_workers_trials(study, objective, [record], heartbeat, log, wait=timeout is None)
    except KeyboardInterrupt:
        log("interrupted: the study keeps its finished trials; run the same command to resume it")
        finish_study(study, recipe, log)
        raise
    finish_study(study, recipe, log)


def _retry_dead_workers_trials(study, objective, callbacks, heartbeat: Heartbeat, log, wait: bool) -> None:
    """Before this worker leaves. Optuna fails a dead worker's trial (no heartbeat for grace_s) only when a worker
    starts a trial, and the retry it queues runs only if one starts another: near the end of a study, neither may
    happen. So wait (at most grace_s) for the trials still running to finish or go stale, then run the retries."""
    deadline = time.time() + (heartbeat.grace_s + 2 * heartbeat.interval_s if wait else 0)
    waited = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        retries = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                   if "failed_trial" in t.system_attrs]
        if retries:
            log(f"retrying {len(retries)} trial(s) of stopped workers: "
                + ", ".join(str(t.system_attrs["failed_trial"]) for t in retries))
            study.optimize(objective, n_trials=len(retries), catch=(Exception,), callbacks=callbacks,
                           gc_after_trial=True)
        elif not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) or time.time() > deadline:
            return
        else:
            if not waited:
                log(f"waiting up to {deadline - time.time():.0f} s for the trials still running elsewhere to finish "
                    f"or, if their worker died, to be retried here")
                waited = True
            time.sleep(heartbeat.interval_s)


def finish_study(study: optuna.Study, recipe: Recipe, log=print) -> None:
    states = [t.state for t in study.trials]
    log(f"study {study.study_name!r}: " + ", ".join(f"{states.count(s)} {s.name.lower()}" for s in TrialState
                                                    if states.count(s)))
    if not any(s == TrialState.COMPLETE for s in states):
        log("no trial completed: no best.yaml")
        return
    best = study.best_trial
    log(f"best: trial {best.number}, {recipe.train.metric} {best.value:.4f}  "
        + " ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    for path in [write_best(study, recipe), write_top_k(study, recipe), *save_plots(study, recipe, log)]:
        log(f"wrote {path}")


def write_best(study: optuna.Study, recipe: Recipe) -> Path:
    """best.yaml: the resolved recipe with the best trial's values and no search section, for `kit run`."""
    best, name = study.best_trial, study.study_name
    raw = recipe.to_dict()
    for key, value in best.params.items():
        raw = set_path(raw, key, value)
    raw["name"] = f"{recipe.name}-best" if name == recipe.name else f"{recipe.name}-{name}-best"
    raw.pop("search")
    recipe_from_dict(raw, source="best.yaml")  # it must load as it is
    head = (f"# Trial {best.number} of study {name!r}: validation {recipe.train.metric} {best.value:.6g} "
            f"(fold {recipe.search.fold}, seed {recipe.seeds[0]}).\n# kit run this file: its member of "
            f"that fold and seed retrains the trial; ensemble, TTA and submission as in {recipe.name}.\n")
    return write_text_atomic(study_dir(recipe, name) / "best.yaml", head + yaml.safe_dump(raw, sort_keys=False))


def top_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: (-t.value if maximize else t.value, t.number))[:k]


def write_top_k(study: optuna.Study, recipe: Recipe) -> Path:
    """top_k.json: the search.top_k best complete trials, with their run dirs and prediction files."""
    trials = []
    for t in top_trials(study, recipe.search.top_k):
        run_dir, member, tta = t.user_attrs.get("run_dir"), t.user_attrs.get("member"), t.user_attrs.get("tta")
        preds = {split: str(pred_path(run_dir, member, split, tta)) for split in ("oof", "test")
                 if run_dir and member and pred_path(run_dir, member, split, tta).exists()}
        trials.append({"number": t.number, "value": t.value, "params": t.params, "run_dir": run_dir,
                       "member": member, "tta": tta, "worker": t.user_attrs.get("worker"), "predictions": preds})
    return write_json_atomic(study_dir(recipe, study.study_name) / "top_k.json",
                             {"study": study.study_name, "metric": recipe.train.metric,
                              "direction": study.direction.name.lower(), "trials": trials})


def blend_top_k(top_k_json, methods=None) -> dict:
    """Blend the top-k trials' out-of-fold predictions with kit.ensemble: {method: MethodResult}. They all
    validated the same fold, so their rows line up."""
    from kit import ensemble as E
    from kit.predictions import load_predictions
    top = json.loads(Path(top_k_json).read_text())
    oofs = [load_predictions(t["predictions"]["oof"]) for t in top["trials"] if "oof" in t["predictions"]]
    if len(oofs) < 2:
        raise ValueError(f"{top_k_json}: {len(oofs)} trials with predictions here; blending needs 2 or more")
    oofs = [p.reorder(oofs[0].ids) for p in oofs]
    return E.evaluate_methods(oofs, top["metric"], methods=methods or E.METHODS)


def save_plots(study: optuna.Study, recipe: Recipe, log=print) -> list[Path]:
    """optimization_history.png always; param_importances.png with 2+ complete trials and 2+ searched keys."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm
    out = study_dir(recipe, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"optimization_history.png": lambda: vm.plot_optimization_history(study)}
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 2:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=recipe.search.seed)
        plots["param_importances.png"] = lambda: vm.plot_param_importances(study, evaluator=evaluator)
    else:
        log("param importances need 2 complete trials and 2 searched keys: not plotted")
    paths = []
    for file, plot in plots.items():
        try:
            # rc_context: Optuna's plots switch pyplot to the ggplot style for the whole process; undo it after.
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fig = plot().get_figure()
                fig.savefig(out / file, dpi=120, bbox_inches="tight")
                plt.close(fig)
            paths.append(out / file)
        except Exception as e:  # e.g. every complete trial has the same values: no importance to compute
            log(f"{file} not plotted: {type(e).__name__}: {e}")
    return paths
