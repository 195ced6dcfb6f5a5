"""The subcommands: each calls one library function and prints (kit.cli._parser wires them to the parser)."""
from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kit.errors import printable

console = Console(stderr=False)
err = Console(stderr=True, soft_wrap=True)


def _t(value) -> str:
    """A value from a file, a recipe or the user, as terminal text: rich markup escaped (a run named
    `r[bold]x` prints as written) and control characters shown as escapes (kit.errors.printable)."""
    return escape(printable(value))


def _recipe_args(p):
    p.add_argument("recipe", help="YAML recipe file, or a run directory (runs/<name>: its saved recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.lr=3e-4 (repeatable)")


def _load(args):
    from kit.context import load_recipe_or_run
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
    console.print(_t(msg), highlight=False)


def _executor_args(p):
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where members train: one after the other here (local), or as Ray tasks (ray: one GPU "
                        "each where there are GPUs; needs pip install 'kit[ray]')")
    p.add_argument("--address", help="Ray cluster to send the members to (default: $RAY_ADDRESS, else a local "
                                     "Ray instance on 127.0.0.1); the run directory must be shared storage")


def cmd_train(args):
    from kit import distributed
    from kit.run import train
    recipe = _load(args)
    world = distributed.start(recipe.train.device)  # under torchrun: one member over its processes
    try:
        if world is not None and not world.main:  # rank 0 speaks for all
            train(recipe, args.member, resume=args.resume, log=lambda msg: None, executor=args.executor,
                  address=args.address)
            return 0
        with _progress() as pf:
            ctx, records = train(recipe, args.member, resume=args.resume, progress_factory=pf,
                                 log=_log, executor=args.executor, address=args.address)
        together = f", each member by {world.size} processes together (torchrun)" if world else ""
        console.print(f"outputs in [bold]{_t(ctx.run_dir)}[/] (checkpoints, history.csv, predictions in members/)"
                      f"{together}", highlight=False)
        return 0
    finally:
        distributed.stop()


def _not_under_torchrun(command: str) -> None:
    from kit import distributed
    from kit.errors import RecipeError
    if distributed.launched():
        raise RecipeError(f"kit {command} under torchrun: torchrun spreads the training of one member; run "
                          f"`torchrun --nproc-per-node N -m kit train RECIPE --member I` for the members, then "
                          f"`kit {command}` alone")


def cmd_run(args):
    from kit.run import run
    _not_under_torchrun("run")
    recipe = _load(args)
    with _progress() as pf:
        summary = run(recipe, resume=True, force=args.force, progress_factory=pf, log=_log,
                      executor=args.executor, address=args.address)
    print_summary(summary)
    return 0


def cmd_predict(args):
    if args.images is None and args.csv is None:
        return _repredict(args)
    import time
    import warnings
    from kit.errors import RecipeError
    from kit.inference import csv_images, folder_images, load, prepare_images, write_predictions
    from kit.rundir import check_new_file
    if args.csv and not args.image_dir:
        raise RecipeError("--csv needs --image-dir, the folder its image paths are relative to")
    if args.tta and len(args.tta) > 1:
        raise RecipeError(f"--tta {' '.join(args.tta)}: new images are predicted at one TTA mode; pass one")
    out = check_new_file(args.output, force=args.force)  # refused before any model runs
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
    console.print(_t(f"{ens.source}: {method} of {configs}; {sum(len(c.members) for c in ens.configs)} models on "
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
        console.print(f"[yellow]note:[/] {_t(note.message)}", highlight=False)
    path = write_predictions(ens, probs, out, sample=args.sample, force=args.force)
    console.print(f"{len(table):,} images in {seconds:.1f} s ({len(table) / seconds:.1f} images/s): "
                  f"[bold]{_t(path)}[/] ({ens.recipe.submit.format})", highlight=False)
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
    from kit.inference import BUNDLE_FILE
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
    t = Table(title=f"validation scores by TTA mode ({_t(args.run)})")
    t.add_column("member")
    modes = list(dict.fromkeys(m for s in scores.values() for m in s))
    for m in modes:
        t.add_column(_t(m), justify="right")
    for member, s in scores.items():
        t.add_row(_t(member), *[f"{s[m]:.4f}" if m in s else "" for m in modes])
    console.print(t)
    return 0


def cmd_export(args):
    from kit.bundle import bundle_size, export_bundle
    path = export_bundle(args.run, args.out, as_zip=args.zip)
    console.print(f"bundle [bold]{_t(path)}[/]: {bundle_size(path) / 1e6:.1f} MB; predict with: "
                  f"kit predict {_t(path)} --images DIR", highlight=False)
    return 0


def cmd_submit(args):
    from kit.context import load_recipe_or_run, prepare_run
    from kit.run import finish
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
    from pathlib import Path
    from kit.errors import UnsafeFileError
    from kit.results import summary_dict
    from kit.readers import read_json
    path = Path(teacher_dir) / "summary.json"
    teacher = read_json(path, fix=f"write it again with: kit submit {teacher_dir}",
                        schema={"methods": dict, "chosen?": (str, type(None)), "best_member?": (str, type(None)),
                                "best_member_score?": (int, float, type(None))})
    d = summary_dict(summary)
    try:
        t_score = float(teacher["methods"][teacher["chosen"]]["oof"] if teacher.get("chosen")
                        else teacher["best_member_score"])
    except (KeyError, TypeError, ValueError):
        raise UnsafeFileError(f"{path} does not say the teacher's score; write it again with: kit submit "
                              f"{teacher_dir}") from None
    console.print(_t(f"student {d['best_member']}: out-of-fold {summary.metric} {d['best_member_score']:.4f}; "
                     f"teacher ({teacher.get('chosen') or teacher.get('best_member')}): {t_score:.4f}"),
                  highlight=False)


def cmd_plan(args):
    from kit.plan import plan_run
    _print_plan(_load(args), plan_run)
    return 0


def _print_plan(recipe, planner) -> None:
    """The plan's lines (planner: kit.plan.plan_run, which reuses a run directory's plan, or make_plan)."""
    from kit.context import load_checked_sources
    from kit.plan import format_plan
    sources, bad = load_checked_sources(recipe)
    for line in format_plan(planner(recipe, sources)):
        console.print(_t(line), highlight=False)
    if bad:
        console.print(f"{len(bad)} bad images would be left out (data.bad_images: skip)", highlight=False)


def cmd_tune(args):
    from kit.tune import create_study, tune
    recipe = _load(args)
    if args.create_only:
        study = create_study(recipe, args.storage, args.study)
        console.print(f"study [bold]{_t(study.study_name)}[/] ready: {len(study.trials)} trials; start the workers",
                      highlight=False)
        return 0
    tune(recipe, args.trials, timeout=args.timeout, storage=args.storage, study_name=args.study,
         total=args.total, log=_log)
    return 0


def cmd_advise(args):
    from kit.advise import advise, format_advice
    for line in format_advice(advise(_load(args))):
        console.print(_t(line), highlight=False)
    return 0


def cmd_classify(args):
    from kit.classify import classify_images, format_topk
    results = classify_images(args.images, model_name=args.model, weights=args.weights, topk=args.topk)
    for line in format_topk(args.images, results):
        console.print(_t(line), highlight=False)
    return 0


def cmd_leaderboard(args):
    from kit.leaderboard import leaderboard_report
    filters = {k: v for k, v in dict(kind=args.kind, recipe=args.recipe, backbone=args.backbone,
                                     since=args.since, until=args.until).items() if v}
    text = leaderboard_report(args.url, by=args.by, metric=args.metric, group_seeds=not args.no_group, top=args.top,
                              out=args.output, fmt=args.format, force=args.force, **filters)
    # the table or the export itself (--format without --output: `kit leaderboard --format csv > file`), as
    # rendered: never read again as rich markup
    console.file.write(text if text.endswith("\n") else text + "\n")
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
    from kit.init import BUDGET_MINUTES, init_recipe
    from kit.plan import make_plan
    from kit.recipe import load_recipe
    text, _ = init_recipe(args.data_dir, out=args.output, force=args.force, label_column=args.label_column,
                          id_column=args.id_column, path_column=args.path_column,
                          budget={None: BUDGET_MINUTES, 0: None}.get(args.budget, args.budget), task=args.task,
                          metric=args.metric, group_column=args.group_column)
    console.print(_t(text), highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{_t(args.output)}[/]; its plan (kit plan {_t(args.output)}):", highlight=False)
    recipe = load_recipe(args.output)  # the file as written, as kit run will read it
    if recipe.model.strategy == "auto":
        console.print("strategy auto: the advisor measures the images once (cached for kit run)", highlight=False)
    _print_plan(recipe, make_plan)
    return 0


def print_summary(s) -> None:
    from kit.results import summary_dict
    d = summary_dict(s)
    t = Table(title=f"members: out-of-fold {s.metric} by TTA mode (* chosen, pooled out-of-fold)")
    t.add_column("member")
    modes = list(dict.fromkeys(m for c in s.configs for m in c.tta_scores))
    for m in modes:
        t.add_column(m, justify="right")
    for c in s.configs:
        t.add_row(_t(c.config), *[f"{c.tta_scores[m]:.4f}" + (" *" if m == c.tta else "  ") if m in c.tta_scores
                                  else "" for m in modes])
    console.print(t)
    for c in s.configs:  # which rule chose each configuration's TTA mode, and by how much
        if len(c.tta_scores) > 1:
            console.print(_t(f"TTA of {c.config}: {c.tta}, {c.tta_why}"), highlight=False)
    if s.configs:
        console.print(_t(f"mean ± std across members: {d['member_mean']:.4f} ± {d['member_std']:.4f} "
                         f"(n={len(s.configs)}); best member: {d['best_member']} {d['best_member_score']:.4f}"),
                      highlight=False)
    if s.methods:
        t = Table(title="blending (weights fitted on out-of-fold predictions; nested = fitted on other folds)")
        for col in ("method", "oof", "nested", "weights"):
            t.add_column(col, justify="left" if col in ("method", "weights") else "right")
        for name, res in s.methods.items():
            w = " ".join(f"{x:.2f}" for x in res.weights)
            t.add_row(_t(name) + (" *" if name == s.chosen else ""), f"{res.oof_score:.4f}", f"{res.nested_score:.4f}",
                      w)
        console.print(t)
        console.print(_t(f"blend chosen: {s.chosen}, {s.chosen_why}"), highlight=False)
        if s.chosen != "best" and "gain_nested" in d:
            console.print(f"gain over the best member: {d['gain_nested']:+.4f} nested, {d['gain_oof']:+.4f} "
                          f"out-of-fold", highlight=False)
    if s.decision:  # kit.decision: thresholds or cut-points fitted out of fold
        r = s.decision
        what = "thresholds per label" if r["kind"] == "thresholds" and len(r["values"]) > 1 else \
            "a threshold" if r["kind"] == "thresholds" else "cut-points between grades"
        shown = ", ".join(f"{v:.3g}" for v in r["values"][:12]) + (", ..." if len(r["values"]) > 12 else "")
        console.print(_t(f"decision rule: {what} fitted out of fold ({shown}): {s.metric} {r['nested']:.4f} nested "
                         f"against {r['default']:.4f} with the default rule; "
                         f"{'applied' if r['kept'] else 'not applied'}: {r['why']}"), highlight=False)
    for c in s.configs:
        if c.refits:
            what = "its refit" if len(c.refits) == 1 else f"the mean of its {len(c.refits)} refits"
            console.print(_t(f"test predictions of {c.config}: {what} on every labelled image, at {c.tta} "
                             f"({', '.join(c.refits)}; not validated)"), highlight=False)
    if s.bad_images:
        console.print(f"[yellow]{s.bad_images} bad images left out[/] (data.bad_images: skip): "
                      f"{_t(s.run_dir / 'bad_images.csv')}", highlight=False)
    if s.pending:
        console.print(f"[yellow]{len(s.pending)} members not finished[/]: {_t(', '.join(s.pending[:5]))}",
                      highlight=False)
    if s.submission:
        console.print(f"submission: [bold]{_t(s.submission)}[/]", highlight=False)
    if s.test_scores:
        t = s.test_scores
        console.print(f"submission scored against the known answers: {t['metric']} public {t['public']:.4f} "
                      f"(n={t['n_public']}), private {t['private']:.4f} (n={t['n_private']})")
    console.print(f"run directory: [bold]{_t(s.run_dir)}[/]  ({s.wall_time_s:.0f} s)", highlight=False)


