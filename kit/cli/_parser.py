"""The argument parser of `kit`: one small function per group of subcommands."""
from __future__ import annotations

import argparse

from kit.cli._bench import cmd_bench, cmd_leaderboard_or_suite
from kit.cli._commands import (cmd_advise, cmd_classify, cmd_distill, cmd_export, cmd_init, cmd_leaderboard,
                               cmd_plan, cmd_predict, cmd_run, cmd_score, cmd_submit, cmd_train, cmd_tune,
                               _executor_args, _recipe_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kit", description="Transfer learning for image competitions, from one recipe.")
    sub = p.add_subparsers(dest="command", required=True)
    # subcommands in the order `kit -h` lists them
    _add_run_commands(sub)
    _add_predict_commands(sub)
    _add_model_commands(sub)
    _add_result_commands(sub)
    _add_data_commands(sub)
    return p


def _add_run_commands(sub) -> None:
    """run, plan, distill, train: a recipe's members planned and trained."""
    s = sub.add_parser("run", help="train all members, predict with TTA, blend, write the submission")
    _recipe_args(s)
    s.add_argument("--force", action="store_true", help="replace an existing, different submission file")
    _executor_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("plan", help="show the run plan of a recipe (members, strategies, lr groups, TTA) without training")
    _recipe_args(s)
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("distill", help="train one student model on a finished run's blend (a member of its own run)")
    s.add_argument("run", help="the teacher's run directory (runs/<name>), finished")
    s.add_argument("--into", required=True, metavar="BACKBONE", help="timm name of the student, e.g. resnet18")
    s.add_argument("--name", help="the student's run name (default: <teacher>-distill-<backbone>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the student's recipe, e.g. --set distill.alpha=0.3 (repeatable)")
    s.set_defaults(fn=cmd_distill)

    s = sub.add_parser("train", help="train members of a recipe (all, or some with --member)")
    _recipe_args(s)
    s.add_argument("--member", help="index, range (0-4) or list (1,5,7) of members to train")
    s.add_argument("--resume", action="store_true", help="continue interrupted members from their last checkpoint")
    _executor_args(s)
    s.set_defaults(fn=cmd_train)


def _add_predict_commands(sub) -> None:
    """predict, export, submit: what a finished run makes."""
    s = sub.add_parser("predict", help="predict new images with a finished run or bundle (--images / --csv), or "
                                       "predict a run's own splits with more TTA modes (--tta)")
    s.add_argument("run", help="run directory (runs/<name>), or a bundle folder / .zip from kit export")
    s.add_argument("--tta", action="append", help="TTA mode; with --images/--csv: one mode for every configuration "
                                                  "instead of its chosen one; else repeatable, default tta.modes")
    new = s.add_mutually_exclusive_group()
    new.add_argument("--images", metavar="DIR", help="predict the image files in DIR (ids: file names)")
    new.add_argument("--csv", metavar="FILE", help="predict the images a CSV lists (an id column, and a path "
                                                   "column or ids + --image-suffix), inside --image-dir")
    s.add_argument("--image-dir", metavar="DIR", help="with --csv: the folder its paths are relative to")
    s.add_argument("--id-column", help="with --csv: the id column (default: the first)")
    s.add_argument("--path-column", help="with --csv: the column of image paths (default: id + image suffix)")
    s.add_argument("--image-suffix", help="appended to ids to name files (default: the run's data.image_suffix)")
    s.add_argument("--output", default="predictions.csv", help="CSV to write (default: predictions.csv here)")
    s.add_argument("--force", action="store_true", help="replace an existing --output file")
    s.add_argument("--sample", metavar="CSV", help="sample submission fixing ids, order and columns (checked)")
    s.add_argument("--members", type=int, metavar="K", help="keep the K configurations weighing most in the blend")
    s.add_argument("--batch-size", type=int, metavar="N", help="images per batch (default: 2 x train.batch_size)")
    s.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the run's train.device)")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("export", help="write a finished run as one self-contained bundle folder (or --zip)")
    s.add_argument("run", help="run directory (runs/<name>)")
    s.add_argument("out", help="new folder to write (with --zip: OUT.zip)")
    s.add_argument("--zip", action="store_true", help="write one .zip file instead of a folder")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("submit", help="blend a run's members and write the submission CSV")
    s.add_argument("run", help="run directory (runs/<name>) or its recipe")
    s.add_argument("--output", help="submission path (default: in the run directory)")
    s.add_argument("--force", action="store_true", help="replace an existing submission file")
    s.set_defaults(fn=cmd_submit)


def _add_model_commands(sub) -> None:
    """tune and advise choose a recipe's settings; classify tries a pretrained model as it is."""
    s = sub.add_parser("tune", help="search the recipe's search.params with Optuna: resumable, many workers")
    _recipe_args(s)
    s.add_argument("--trials", type=int, help="trials this worker runs (default: search.trials)")
    s.add_argument("--total", type=int, help="stop once the study holds this many finished trials, from all workers")
    s.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    s.add_argument("--storage", metavar="URL", help="SQLAlchemy URL or SQLite file (default: runs/<name>/study.sqlite)")
    s.add_argument("--study", metavar="NAME", help="study name (default: search.study_name, else the recipe name)")
    s.add_argument("--create-only", action="store_true", help="create the study and exit, before starting workers")
    s.set_defaults(fn=cmd_tune)

    s = sub.add_parser("advise", help="measure the data against the pretrained backbone; suggest a transfer strategy")
    _recipe_args(s)
    s.set_defaults(fn=cmd_advise)

    s = sub.add_parser("classify", help="top-5 ImageNet classes of images, with a pretrained model as it is")
    s.add_argument("images", nargs="+")
    s.add_argument("--model", default="efficientnet_lite0")
    s.add_argument("--weights", default="auto", help="auto | hub | offline | path to a weights file")
    s.add_argument("--topk", type=int, default=5)
    s.set_defaults(fn=cmd_classify)


def _add_result_commands(sub) -> None:
    """leaderboard, score: recorded results."""
    s = sub.add_parser("leaderboard", help="ranked table of recorded results; --format csv|md|html exports it")
    s.add_argument("--url", help="SQLAlchemy URL (default $KIT_LEADERBOARD_URL or leaderboard/leaderboard.sqlite)")
    s.add_argument("--by", default="score", choices=["score", "public", "private"])
    s.add_argument("--metric", help="rank by this metric (default: the entries' own)")
    s.add_argument("--kind", action="append", help="member, tta, ensemble, trial, submission (repeatable)")
    s.add_argument("--recipe", action="append")
    s.add_argument("--backbone", action="append")
    s.add_argument("--since", help="ISO date, e.g. 2026-11-01")
    s.add_argument("--until", help="ISO date (exclusive)")
    s.add_argument("--top", type=int)
    s.add_argument("--no-group", action="store_true", help="one row per seed instead of mean ± std")
    s.add_argument("--format", choices=["csv", "md", "html"])
    s.add_argument("--output", help="file to export to (format from its suffix); default: standard output")
    s.add_argument("--force", action="store_true", help="replace an existing --output file")
    s.add_argument("--suite", metavar="NAME", help="a benchmark suite's results (kit bench): a table per data set "
                                                   "with 95%% intervals over seeds, mean ranks across data sets")
    s.set_defaults(fn=cmd_leaderboard_or_suite)

    s = sub.add_parser("bench", help="run a benchmark suite: data sets x entries x seeds, each cell a kit run "
                                     "(resumable, shared between processes); --plan lists cells and minutes")
    s.add_argument("suite", help="the suite file (YAML: name, budget, datasets, entries, seeds)")
    s.add_argument("--plan", action="store_true", help="list the cells, their state and estimated minutes; train "
                                                       "nothing")
    s.add_argument("--no-wait", action="store_true", help="return when no cell is left to take, without waiting "
                                                          "for cells other processes are running")
    _executor_args(s)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("score", help="score a submission against a solution with a Public/Private Usage column")
    s.add_argument("submission")
    s.add_argument("solution")
    s.add_argument("--metric", default="accuracy")
    s.add_argument("--id-column")
    s.add_argument("--name", help="name on the leaderboard (default: the submission path)")
    s.add_argument("--url", help="leaderboard URL")
    s.add_argument("--no-record", action="store_true", help="print only, record nothing")
    s.set_defaults(fn=cmd_score)


# kit.recipe.TASK_KINDS, spelled here: importing kit.recipe (pydantic) would slow every kit command's start-up;
# tests/test_init_tasks.py checks that they agree (and the --metric help against kit.task.METRICS_OF)
TASK_KINDS = ("multiclass", "binary", "multilabel", "ordinal", "regression")


def _add_data_commands(sub) -> None:
    """init: a recipe for a dataset folder."""
    s = sub.add_parser("init", help="look at a dataset folder, write a commented recipe for it, show its plan")
    s.add_argument("data_dir", help="ImageFolder tree (train/<class>/*) or Kaggle folder (train.csv, images, "
                                    "sample_submission.csv)")
    s.add_argument("-o", "--output", default="recipe.yaml", help="recipe file to write (default: recipe.yaml)")
    s.add_argument("--force", action="store_true", help="replace an existing recipe file")
    s.add_argument("--label-column", help="train.csv column of the labels, when several could be")
    s.add_argument("--id-column", help="train.csv column of the image ids (default: sample_submission's first)")
    s.add_argument("--path-column", help="train.csv column of image paths, relative to a folder of the dataset")
    s.add_argument("--task", choices=TASK_KINDS,
                   help="what the target is (default: detected from train.csv and the sample submission; kit init "
                        "asks when two readings fit, e.g. integers 0-4: classes or grades)")
    s.add_argument("--metric", metavar="NAME",
                   help="the validation metric, train.metric: one the task takes (multiclass: accuracy, log_loss, "
                        "f1_macro, f1_micro, roc_auc; binary: roc_auc, log_loss, accuracy, f1_macro; multilabel: "
                        "f2_samples, f1_micro, f1_macro, roc_auc, log_loss, accuracy; ordinal: qwk, rmse, mae, "
                        "accuracy; regression: rmse, mae). Default: the task's usual one")
    s.add_argument("--group-column", metavar="NAME",
                   help="train.csv column grouping the images (a patient, a subject): folds keep a group together "
                        "(default: detected from the column names, e.g. patient_id)")
    # default None, read as kit.init.BUDGET_MINUTES by cmd_init: importing kit.init here (numpy, pandas) would cost
    # every kit command half a second of start-up; tests/test_init.py checks that the help states its value
    s.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="minutes kit run may take on this machine: the epochs are chosen to fit, from a short "
                        "timing of the backbone here (default 30; 0: the default epochs, untimed)")
    s.set_defaults(fn=cmd_init)


