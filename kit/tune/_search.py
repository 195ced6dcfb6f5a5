"""tune(): run trials in this process, retry those of dead workers, then write the outputs."""
from __future__ import annotations

import time
import warnings

import optuna
from optuna.trial import TrialState

from kit.recipe import Recipe
from kit.tune._outputs import finish_study
from kit.tune._storage import Heartbeat, create_study, resolve_heartbeat, study_dir
from kit.tune._trials import _after_trial, _objective


def tune(recipe: Recipe, n_trials: int | None = None, timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, log=print, *, total: int | None = None, sampler=None, pruner=None,
         heartbeat_s=None, grace_s=None, max_retry=None) -> optuna.Study:
    """Run n_trials (default search.trials) trials in this process, at most `timeout` seconds, stopping early once
    the study holds `total` finished trials; then write best.yaml, top_k.json and the plots. Trials that raise or
    score NaN fail and the study goes on; Ctrl-C stops it (run again to resume)."""
    from kit.context import with_resolved_metric
    recipe = with_resolved_metric(recipe)  # train.metric: auto -> the task's (the study's direction needs it)
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
