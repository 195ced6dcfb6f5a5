"""`kit bench SUITE.yaml [--plan]` and `kit leaderboard --suite NAME`: thin wrappers over kit.bench."""
from __future__ import annotations

from rich.markup import escape

from kit.cli._commands import cmd_leaderboard, console


def cmd_leaderboard_or_suite(args):
    """kit leaderboard: the ranked table, or with --suite a suite's report."""
    return cmd_suite_report(args) if args.suite else cmd_leaderboard(args)


def cmd_bench(args):
    from kit.bench import load_suite, plan_suite, run_suite, suite_report
    from kit.bench._report import render_text
    suite = load_suite(args.suite)
    if args.plan:
        rows = plan_suite(suite)
        width = max(len(r["cell"]) for r in rows)
        for r in rows:
            console.print(escape(f"{r['cell']:<{width}}  {r['members']} member(s) x {r['epochs']} epochs  "
                                 f"~{r['minutes']:.1f} min  {r['state']}"), highlight=False)
        left = sum(r["minutes"] for r in rows if r["state"] != "finished")
        console.print(f"{len(rows)} cells; about {left:.0f} minutes left to run here (one process; timings of each "
                      f"backbone at its input size measured by kit init's timing, cached)", highlight=False)
        return 0
    run_suite(suite, executor=args.executor, address=args.address, wait=not args.no_wait,
              log=lambda m: console.print(escape(m), highlight=False))
    console.print(escape(render_text(suite_report(suite.spec.leaderboard, suite.name))), highlight=False,
                  soft_wrap=True)
    return 0


def cmd_suite_report(args) -> int:
    """kit leaderboard --suite NAME [--format md|csv|html] [--output FILE]: standard output unless --output."""
    from kit.bench import RENDERERS, suite_report
    report = suite_report(args.url, args.suite)
    text = RENDERERS[args.format or "text"](report)
    if not args.output:
        console.file.write(text)
        return 0
    from kit.leaderboard import resolve_url, sqlite_path
    from kit.rundir import write_new_file
    out = write_new_file(args.output, text, force=getattr(args, "force", False),
                         protect=(sqlite_path(resolve_url(args.url)),))  # never the database it reads
    console.print(f"wrote {escape(str(out))}", highlight=False)
    return 0
