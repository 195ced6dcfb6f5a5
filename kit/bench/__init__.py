"""Benchmark suites: data sets x entries (recipes, or overrides of a base recipe) x seeds, each cell an ordinary kit
run, with confidence intervals over seeds, ranks per data set, mean ranks across data sets and a test of whether
the best entry's lead is real.

    suite = load_suite("recipes/suites/mini.yaml")   # kit bench SUITE.yaml [--plan]
    plan_suite(suite)                                # cells and estimated minutes, nothing trained
    run_suite(suite)                                 # resumable; processes sharing the folder split the cells
    report = suite_report(url, suite.name)           # kit leaderboard --suite NAME [--format html|md|csv]

    _suite   the suite file (SuiteSpec), its cells and their recipes
    _run     running cells (locks, resume, cell.json, leaderboard rows), estimates
    _stats   Student t intervals, ranks, Friedman's test, Nemenyi's critical difference
    _report  tables per data set and across them, plots; text, Markdown, CSV, HTML
"""
from kit.bench._report import RENDERERS, SuiteReport, build_report, suite_report
from kit.bench._run import CELL_FILE, cell_done, plan_suite, run_cell, run_suite
from kit.bench._stats import Comparison, Interval, compare, mean_ranks, nemenyi_cd, ranks, t_interval
from kit.bench._suite import Cell, Suite, SuiteSpec, load_suite

__all__ = ["CELL_FILE", "Cell", "Comparison", "Interval", "RENDERERS", "Suite", "SuiteReport", "SuiteSpec",
           "build_report", "cell_done", "compare", "load_suite", "mean_ranks", "nemenyi_cd", "plan_suite", "ranks",
           "run_cell", "run_suite", "suite_report", "t_interval"]
