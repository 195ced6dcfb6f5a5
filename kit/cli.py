"""`kit <subcommand>`: parse arguments, call one library function, print. Bad input exits 2 with a message."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
err = Console(stderr=True, soft_wrap=True)


def _recipe_args(p):
    p.add_argument("recipe", help="YAML recipe file, or a run directory (runs/<name>: its saved recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.lr=3e-4 (repeatable)")


def _load(args):
    from kit.run import load_recipe_or_run
    return load_recipe_or_run(args.recipe, args.overrides)


@contextmanager
def _progress():
    """One rich progress bar per epoch: loss, images/s. Falls back to nothing when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        def factory(epoch):
            task = prog.add_task(f"epoch {epoch + 1}", total=None, loss=0.0, ips=0.0)

            def update(i, n, loss, ips):
                prog.update(task, completed=i, total=n, loss=loss, ips=ips)
                if i == n:
                    prog.remove_task(task)
            return update
        yield factory


def _log(msg):
    console.print(msg, highlight=False)


def _executor_args(p):
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where members train: one after the other here (local), or as Ray tasks (ray: one GPU "
                        "each where there are GPUs; needs pip install 'kit[ray]')")
    p.add_argument("--address", help="Ray cluster to send the members to (default: $RAY_ADDRESS, else a local "
                                     "Ray instance on 127.0.0.1); the run directory must be shared storage")


def cmd_train(args):
    from kit.run import train
    recipe = _load(args)
    with _progress() as pf:
        ctx, records = train(recipe, args.member, resume=args.resume, progress_factory=pf,
                             log=lambda msg: _log(escape(msg)), executor=args.executor, address=args.address)
    console.print(f"outputs in [bold]{ctx.run_dir}[/] (checkpoints, history.csv, predictions in members/)")
    return 0


def cmd_run(args):
    from kit.run import run
    recipe = _load(args)
    with _progress() as pf:
        summary = run(recipe, resume=True, force=args.force, progress_factory=pf, log=lambda msg: _log(escape(msg)),
                      executor=args.executor, address=args.address)
    print_summary(summary)
    return 0


def cmd_predict(args):
    if args.images is None and args.csv is None:
        return _repredict(args)
    import time
    import warnings
    from pathlib import Path
    from kit.errors import RecipeError, RunDirError
    from kit.inference import csv_images, folder_images, load, prepare_images, write_predictions
    if args.csv and not args.image_dir:
        raise RecipeError("--csv needs --image-dir, the folder its image paths are relative to")
    if args.tta and len(args.tta) > 1:
        raise RecipeError(f"--tta {' '.join(args.tta)}: new images are predicted at one TTA mode; pass one")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise RunDirError(f"{out} exists and was not overwritten; pass --force to replace it, or pick another --output")
    ens = load(args.run)
    ens = ens.select(args.members) if args.members is not None else ens
    ens = ens.with_tta(args.tta[0]) if args.tta else ens
    suffix = ens.recipe.data.image_suffix if args.image_suffix is None else args.image_suffix
    ids, paths = folder_images(args.images, suffix) if args.images else \
        csv_images(args.csv, args.image_dir, args.id_column, args.path_column, suffix)
    table, _ = prepare_images(paths, ids, ens.classes)  # every bad file named now, before any model runs
    device = ens.device(args.device)
    method = ens.blend.method or "one configuration"
    configs = ", ".join(f"{c.name} ({c.tta})" for c in ens.configs)
    console.print(escape(f"{ens.source}: {method} of {configs}; {sum(len(c.members) for c in ens.configs)} models on "
                         f"{device}"), highlight=False)
    per_1000 = ens.time_per_1000(batch_size=args.batch_size, device=device)
    console.print(f"estimated {per_1000:.1f} s per 1,000 images (timing pass, decoding not included): about "
                  f"{per_1000 * len(table) / 1000:.0f} s for these {len(table):,}", highlight=False)
    t0 = time.perf_counter()
    with _image_progress() as update, warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        probs = ens.predict(table, batch_size=args.batch_size, device=device, progress=update)
    seconds = time.perf_counter() - t0
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(str(note.message))}", highlight=False)
    path = write_predictions(ens, probs, out, sample=args.sample, force=args.force)
    console.print(f"{len(table):,} images in {seconds:.1f} s ({len(table) / seconds:.1f} images/s): "
                  f"[bold]{escape(str(path))}[/] ({ens.recipe.submit.format})", highlight=False)
    return 0


@contextmanager
def _image_progress():
    """A rich bar over images x transform groups while predicting; nothing when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task("predict", total=None)
        yield lambda done, total: prog.update(task, completed=done, total=total)


def _repredict(args):
    from pathlib import Path
    from kit.bundle import BUNDLE_FILE
    from kit.errors import RecipeError
    from kit.run import predict
    if (Path(args.run) / BUNDLE_FILE).is_file() or args.run.endswith(".zip"):
        raise RecipeError(f"{args.run} is a bundle: it predicts new images; pass --images DIR or --csv FILE "
                          f"--image-dir DIR")
    given = [f for f, v in (("--members", args.members), ("--batch-size", args.batch_size), ("--device", args.device),
                            ("--sample", args.sample), ("--image-dir", args.image_dir)) if v is not None]
    if given:
        raise RecipeError(f"{', '.join(given)} apply to new images: pass --images DIR or --csv FILE --image-dir DIR")
    scores = predict(args.run, modes=args.tta, log=_log)
    t = Table(title=f"validation scores by TTA mode ({args.run})")
    t.add_column("member")
    modes = list(dict.fromkeys(m for s in scores.values() for m in s))
    for m in modes:
        t.add_column(m, justify="right")
    for member, s in scores.items():
        t.add_row(member, *[f"{s[m]:.4f}" if m in s else "" for m in modes])
    console.print(t)
    return 0


def cmd_export(args):
    from kit.bundle import bundle_size, export_bundle
    path = export_bundle(args.run, args.out, as_zip=args.zip)
    console.print(f"bundle [bold]{escape(str(path))}[/]: {bundle_size(path) / 1e6:.1f} MB; predict with: "
                  f"kit predict {escape(str(path))} --images DIR", highlight=False)
    return 0


def cmd_submit(args):
    from kit.members import prepare_run
    from kit.run import finish, load_recipe_or_run
    summary = finish(prepare_run(load_recipe_or_run(args.run)), force=args.force, path=args.output)
    print_summary(summary)
    return 0


def cmd_distill(args):
    from kit.pseudo import distill_recipe
    from kit.run import run
    student = distill_recipe(args.run, args.into, args.overrides, name=args.name)
    with _progress() as pf:
        summary = run(student, progress_factory=pf, log=_log)
    print_summary(summary)
    _compare_with_teacher(args.run, summary)
    return 0


def _compare_with_teacher(teacher_dir, summary) -> None:
    """The student's validation score beside its teacher's blend (both out-of-fold, same folds)."""
    import json
    from pathlib import Path
    from kit.run import summary_dict
    teacher = json.loads((Path(teacher_dir) / "summary.json").read_text())
    d = summary_dict(summary)
    t_score = (teacher["methods"][teacher["chosen"]]["oof"] if teacher.get("chosen")
               else teacher["best_member_score"])
    console.print(f"student {d['best_member']}: out-of-fold {summary.metric} {d['best_member_score']:.4f}; "
                  f"teacher ({teacher.get('chosen') or teacher['best_member']}): {t_score:.4f}", highlight=False)


def cmd_plan(args):
    from kit.members import load_checked_sources
    from kit.plan import format_plan, plan_run
    recipe = _load(args)
    sources, bad = load_checked_sources(recipe)
    for line in format_plan(plan_run(recipe, sources)):
        console.print(escape(line), highlight=False)
    if bad:
        console.print(f"{len(bad)} bad images would be left out (data.bad_images: skip)", highlight=False)
    return 0


def cmd_tune(args):
    from kit.tune import create_study, tune
    recipe = _load(args)
    if args.create_only:
        study = create_study(recipe, args.storage, args.study)
        console.print(f"study [bold]{study.study_name}[/] ready: {len(study.trials)} trials; start the workers")
        return 0
    tune(recipe, args.trials, timeout=args.timeout, storage=args.storage, study_name=args.study,
         total=args.total, log=_log)
    return 0


def cmd_advise(args):
    from kit.advise import advise, format_advice
    for line in format_advice(advise(_load(args))):
        console.print(line, highlight=False)
    return 0


def cmd_classify(args):
    from kit.classify import classify_images, format_topk
    results = classify_images(args.images, model_name=args.model, weights=args.weights, topk=args.topk)
    for line in format_topk(args.images, results):
        console.print(line, highlight=False)
    return 0


def cmd_leaderboard(args):
    from kit.leaderboard import leaderboard_report
    filters = {k: v for k, v in dict(kind=args.kind, recipe=args.recipe, backbone=args.backbone,
                                     since=args.since, until=args.until).items() if v}
    out = args.output
    if args.format and not out:
        out = f"leaderboard.{args.format}"
    console.print(leaderboard_report(args.url, by=args.by, metric=args.metric, group_seeds=not args.no_group,
                                     top=args.top, out=out, fmt=args.format, **filters), highlight=False)
    return 0


def cmd_score(args):
    from kit.leaderboard import record_score, score_submission
    result = score_submission(args.submission, args.solution, args.metric, id_column=args.id_column)
    console.print(f"{result['metric']}: public {result['public']} (n={result['n_public']}), "
                  f"private {result['private']} (n={result['n_private']})")
    if not args.no_record:
        record_score(result, name=args.name or str(args.submission), url=args.url,
                     extra={"submission": str(args.submission), "solution": str(args.solution)})
    return 0


def cmd_init(args):
    from kit.init import init_recipe
    from kit.members import load_checked_sources
    from kit.plan import format_plan, make_plan
    from kit.recipe import load_recipe
    text, _ = init_recipe(args.data_dir, out=args.output, force=args.force, label_column=args.label_column,
                          id_column=args.id_column, path_column=args.path_column)
    console.print(escape(text), highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{escape(args.output)}[/]; its plan (kit plan {escape(args.output)}):", highlight=False)
    recipe = load_recipe(args.output)  # the file as written, as kit run will read it
    if recipe.model.strategy == "auto":
        console.print("strategy auto: the advisor measures the images once (cached for kit run)", highlight=False)
    sources, bad = load_checked_sources(recipe)
    for line in format_plan(make_plan(recipe, sources)):
        console.print(escape(line), highlight=False)
    if bad:
        console.print(f"{len(bad)} bad images would be left out (data.bad_images: skip)", highlight=False)
    return 0


def print_summary(s) -> None:
    from kit.run import summary_dict
    d = summary_dict(s)
    t = Table(title=f"members: out-of-fold {s.metric} by TTA mode (* chosen, pooled out-of-fold)")
    t.add_column("member")
    modes = list(dict.fromkeys(m for c in s.configs for m in c.tta_scores))
    for m in modes:
        t.add_column(m, justify="right")
    for c in s.configs:
        t.add_row(c.config, *[f"{c.tta_scores[m]:.4f}" + (" *" if m == c.tta else "  ") if m in c.tta_scores
                              else "" for m in modes])
    console.print(t)
    if s.configs:
        console.print(f"mean ± std across members: {d['member_mean']:.4f} ± {d['member_std']:.4f} "
                      f"(n={len(s.configs)}); best member: {d['best_member']} {d['best_member_score']:.4f}")
    if s.methods:
        t = Table(title="blending (weights fitted on out-of-fold predictions; nested = fitted on other folds)")
        for col in ("method", "oof", "nested", "weights"):
            t.add_column(col, justify="left" if col in ("method", "weights") else "right")
        for name, res in s.methods.items():
            w = " ".join(f"{x:.2f}" for x in res.weights)
            t.add_row(name + (" *" if name == s.chosen else ""), f"{res.oof_score:.4f}", f"{res.nested_score:.4f}", w)
        console.print(t)
        if s.chosen == "best":
            console.print(f"best member kept: no blend beat it on nested folds "
                          f"(best blend {max((n for n in s.methods if n != 'best'), key=lambda n: s.methods[n].nested_score if _higher(s.metric) else -s.methods[n].nested_score)})")
        else:
            console.print(f"chosen: {s.chosen}; gain over the best member: {d['gain_nested']:+.4f} nested, "
                          f"{d['gain_oof']:+.4f} out-of-fold")
    if s.bad_images:
        console.print(f"[yellow]{s.bad_images} bad images left out[/] (data.bad_images: skip): "
                      f"{s.run_dir / 'bad_images.csv'}")
    if s.pending:
        console.print(f"[yellow]{len(s.pending)} members not finished[/]: {', '.join(s.pending[:5])}")
    if s.submission:
        console.print(f"submission: [bold]{s.submission}[/]")
    if s.test_scores:
        t = s.test_scores
        console.print(f"submission scored against the known answers: {t['metric']} public {t['public']:.4f} "
                      f"(n={t['n_public']}), private {t['private']:.4f} (n={t['n_private']})")
    console.print(f"run directory: [bold]{s.run_dir}[/]  ({s.wall_time_s:.0f} s)")


def _higher(metric: str) -> bool:
    from kit.metrics import get_metric
    return get_metric(metric).higher_is_better


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
    s.add_argument("--output", help="file to export to (format from its suffix)")
    s.set_defaults(fn=cmd_leaderboard)

    s = sub.add_parser("score", help="score a submission against a solution with a Public/Private Usage column")
    s.add_argument("submission")
    s.add_argument("solution")
    s.add_argument("--metric", default="accuracy")
    s.add_argument("--id-column")
    s.add_argument("--name", help="name on the leaderboard (default: the submission path)")
    s.add_argument("--url", help="leaderboard URL")
    s.add_argument("--no-record", action="store_true", help="print only, record nothing")
    s.set_defaults(fn=cmd_score)


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
    s.set_defaults(fn=cmd_init)


def main(argv=None) -> int:
    """Any kit.errors.KitError is the user's to fix: one line, exit 2. Anything else is a bug: its traceback."""
    from kit.errors import KitError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except KitError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; finished members and last checkpoints are kept: run again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
