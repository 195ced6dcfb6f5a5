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

A trial is the recipe with the sampled `search.params` keys set (`Recipe.with_overrides`), planned (kit.plan) and trained as one member: the fold
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

from kit.tune._outputs import blend_top_k, finish_study, save_plots, top_trials, write_best, write_top_k
from kit.tune._search import tune
from kit.tune._space import check_search_space, suggest
from kit.tune._storage import (GRACE_ENV, HEARTBEAT_ENV, HEARTBEAT_S, MAX_RETRY, RETRY_ENV, Heartbeat, create_pruner,
                               create_sampler, create_study, open_storage, resolve_heartbeat, resolve_storage,
                               resolve_study_name, study_dir)
from kit.tune._trials import trial_recipe

__all__ = ["GRACE_ENV", "HEARTBEAT_ENV", "HEARTBEAT_S", "MAX_RETRY", "RETRY_ENV", "Heartbeat", "blend_top_k",
           "check_search_space", "create_pruner", "create_sampler", "create_study", "finish_study", "open_storage",
           "resolve_heartbeat", "resolve_storage", "resolve_study_name", "save_plots", "study_dir", "suggest",
           "top_trials", "trial_recipe", "tune", "write_best", "write_top_k"]
