"""kit.bench: suite files, cells run as kit runs (resumable, split between processes), and the statistics of the
results, checked against scipy and by hand."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from kit.bench import (RENDERERS, build_report, compare, load_suite, mean_ranks, nemenyi_cd, plan_suite, ranks,
                       run_suite, suite_report, t_interval)
from kit.bench._report import suite_rows
from kit.cli import main
from kit.errors import RecipeError
from kit.leaderboard import query

# ---------------------------------------------------------------- statistics


def test_t_interval_is_scipys_and_the_hand_computation():
    x = [0.91, 0.93, 0.92, 0.95]
    ci = t_interval(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    # by hand: t(0.975, 3) = 3.182446, s = 0.017078, sqrt(4) = 2
    assert ci.half == pytest.approx(3.182446 * 0.0170783 / 2, rel=1e-5) and ci.mean == pytest.approx(0.9275)
    one = t_interval([0.8])
    assert (one.mean, one.low, one.high, one.n) == (0.8, 0.8, 0.8, 1)


def test_ranks_share_ties_and_follow_the_metrics_direction():
    assert ranks({"a": 0.9, "b": 0.8, "c": 0.9}) == {"a": 1.5, "b": 3.0, "c": 1.5}
    assert ranks({"a": 0.3, "b": 0.2}, higher_is_better=False) == {"a": 2.0, "b": 1.0}  # log loss
    assert ranks({"a": 0.5, "b": 0.5, "c": 0.5}) == {"a": 2.0, "b": 2.0, "c": 2.0}  # all tie: equal ranks
    table = {"d1": {"a": 0.9, "b": 0.8}, "d2": {"a": 0.7, "b": 0.7}}
    assert mean_ranks(table) == {"a": 1.25, "b": 1.75}


def test_friedman_and_nemenyi_against_scipy_and_demsars_table():
    rng = np.random.default_rng(0)
    table = {f"d{i}": {"good": 0.9 + rng.normal(0, 0.01), "mid": 0.8 + rng.normal(0, 0.01),
                       "bad": 0.6 + rng.normal(0, 0.01)} for i in range(8)}
    c = compare(table)
    want = stats.friedmanchisquare(*[[table[d][e] for d in table] for e in ("good", "mid", "bad")])
    assert c.friedman_stat == pytest.approx(want.statistic) and c.friedman_p == pytest.approx(want.pvalue)
    assert c.entries == ["good", "mid", "bad"] and c.mean_rank == {"good": 1.0, "mid": 2.0, "bad": 3.0}
    # Demšar (2006), Table 5a: q_0.05 = 1.960 (k = 2), 2.343 (3), 2.569 (4); CD = q sqrt(k (k + 1) / (6 N))
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569)):
        assert nemenyi_cd(k, 8) == pytest.approx(q * np.sqrt(k * (k + 1) / 48), abs=2e-3)
    # best and runner-up one rank apart on every data set: over 8 data sets less than the CD (1.17), over 20 more
    assert not c.lead_is_real and "not shown to be real" in c.why
    more = compare({f"d{i}": {"good": 0.9, "mid": 0.8, "bad": 0.6} for i in range(20)})
    assert more.critical_difference == pytest.approx(0.741, abs=1e-3) and more.lead_is_real and "a real lead" in more.why
    ties = compare({f"d{i}": {"a": 0.5, "b": 0.5, "c": 0.5} for i in range(4)})
    assert ties.mean_rank == {"a": 2.0, "b": 2.0, "c": 2.0} and ties.friedman_p == 1.0 and not ties.lead_is_real


# ---------------------------------------------------------------- suites

def write_suite(tmp_path, kaggle_root, **over) -> Path:
    suite = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / "lb.sqlite"),
        "seeds": [0, 1], "budget": {"epochs": 1},
        "datasets": {"bars": {"data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg",
                                       "num_workers": 0},
                              "solution": str(kaggle_root / "solution.csv"),
                              "recipe": {"augment.input_size": 32, "augment.crop_pct": 1.0}}},
        "entries": {
            "probe": {"model": {"backbone": "test_resnet", "weights": "none", "strategy": "feature_extract",
                                "head": "logreg", "channels_last": False}, "tta.modes": ["none"]},
            "full": {"model.backbone": "test_resnet", "model.weights": "none", "model.strategy": "full",
                     "model.channels_last": False, "train.batch_size": 8, "tta.modes": ["none"]}}}
    suite.update(over)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("over, pattern", [
    ({"budget": {"epochs": 1, "minutes": 3}}, r"suite key 'budget' in .*exactly one of epochs"),
    ({"seeds": [0, 0]}, r"suite key 'seeds' .*distinct"),
    ({"entries": {"x": {"train.lrr": 1}}}, r"unknown key 'train\.lrr'.*entry x"),
    ({"datasets": {"a/b": {"data": {"source": "digits"}}}}, r"suite key 'datasets' .*not a name that can be a folder"),
    ({"colour": 1}, r"suite key 'colour' .*Extra inputs"),
])
def test_a_bad_suite_file_names_the_key(tmp_path, kaggle_root, over, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_suite(write_suite(tmp_path, kaggle_root, **over))


def test_cells_are_ordinary_runs_with_the_seed_and_budget_and_the_same_split(tmp_path, kaggle_root, env,
                                                                           monkeypatch):
    import kit.init  # kit init's timing of the backbone has a test of its own (test_init.py)
    monkeypatch.setattr(kit.init, "measure_speed", lambda size, batch=None, device=None, backbone=None:
                        {"train": 200.0, "predict": 1000.0, "what": "fixed"})
    suite = load_suite(write_suite(tmp_path, kaggle_root, datasets={
        "bars": {"data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg"}, "sample": 12}}))
    assert [c.key for c in suite.cells] == ["bars/probe-s0", "bars/probe-s1", "bars/full-s0", "bars/full-s1"]
    for c in suite.cells:
        r = c.recipe
        assert r.seeds == [c.seed] and r.train.seed == c.seed and r.train.epochs == 1 and r.data.seed == 0
        assert r.data.sample == 12 and c.run_dir == tmp_path / "runs" / "tiny" / "bars" / f"{c.entry}-s{c.seed}"
    rows = plan_suite(suite)
    assert [r["state"] for r in rows] == ["to run"] * 4 and all(r["minutes"] > 0 for r in rows)
    # 9 training images (12 sampled, a 20 % holdout of 3) an epoch at 200 x 0.76 img/s, plus the fixed minute
    from kit.init import FIXED_MINUTES, LOADER_EFFICIENCY
    full = [r for r in rows if r["entry"] == "full"][0]
    assert full["minutes"] == pytest.approx(FIXED_MINUTES + (9 / (200 * LOADER_EFFICIENCY) + (3 + 6) / 1000) / 60,
                                            rel=0.05)


def test_a_suite_runs_records_reports_and_is_not_retrained(tmp_path, kaggle_root, env, monkeypatch, capsys):
    path = write_suite(tmp_path, kaggle_root)
    suite = load_suite(path)
    records = run_suite(suite, log=lambda m: None)
    assert sorted((r["dataset"], r["entry"], r["seed"]) for r in records) == [
        ("bars", "full", 0), ("bars", "full", 1), ("bars", "probe", 0), ("bars", "probe", 1)]
    for r in records:  # each number carries what produced it
        assert r["test"] is not None and r["recipe_hash"] and r["versions"]["torch"] and r["machine"]["cores"]
        assert r["infer_images_per_s"] > 0 and r["suite_hash"] == suite.hash and "threads" in r["numerics"]
    rows = query(suite.spec.leaderboard, kind="suite")
    assert len(rows) == 4 and set(rows["name"]) == {"tiny:bars:probe", "tiny:bars:full"}
    # finished cells are skipped: nothing trains again
    import kit.run
    monkeypatch.setattr(kit.run, "run", lambda *a, **k: pytest.fail("a finished cell was run again"))
    assert len(run_suite(load_suite(path), log=lambda m: None)) == 4
    report = suite_report(suite.spec.leaderboard, "tiny")
    assert list(report.datasets) == ["bars"] and report.score_kind == {"bars": "test"}
    frame = report.datasets["bars"]
    probe = frame.set_index("entry").loc["probe"]
    scores = sorted(r["test"] for r in records if r["entry"] == "probe")
    assert probe["mean"] == pytest.approx(np.mean(scores)) and probe["seeds"] == 2
    assert probe["ci_half"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std(scores, ddof=1) / np.sqrt(2))
    # the CLI prints it, and exports it in each format (standard output unless --output)
    assert main(["leaderboard", "--url", suite.spec.leaderboard, "--suite", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "bars (scored on test)" in out and "mean rank" in out and "95% Student t" in out
    for fmt in ("md", "csv", "html"):
        target = tmp_path / f"report.{fmt}"
        assert main(["leaderboard", "--url", suite.spec.leaderboard, "--suite", "tiny", "--format", fmt,
                     "--output", str(target)]) == 0
        assert target.read_text() == RENDERERS[fmt](report)
    assert main(["leaderboard", "--url", suite.spec.leaderboard, "--suite", "tiny", "--format", "md",
                 "--output", str(tmp_path / "report.md")]) == 2  # never overwritten
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.images == 2 and page.tables == 2 and "bars" in page.text
    with pytest.raises(RecipeError, match="no cells of suite 'other'"):
        suite_report(suite.spec.leaderboard, "other")


def test_reports_escape_names_and_formulas():
    import pandas as pd
    extra = {"suite": "s<b>", "suite_hash": "h", "dataset": "d|1", "validation": 0.5, "test": None,
             "train_images_per_s": 1.0, "infer_images_per_s": 2.0, "machine": {}, "numerics": {}}
    rows = [{"seed": s, "wall_time_s": 1.0, "backbone": "m", "strategy": "full", "versions": {}, "metric": "accuracy",
             "recipe_hash": "r", "extra": {**extra, "entry": e, "validation": v}}
            for s, (e, v) in enumerate((("=HYPERLINK(1)", 0.5), ("<img src=x onerror=alert(1)>", 0.6)))]
    report = build_report(pd.DataFrame(rows))
    md, csv_text, page = (RENDERERS[f](report) for f in ("md", "csv", "html"))
    assert "<img" not in md and "&lt;img" in md and "d\\|1" in md
    assert "'=HYPERLINK(1)" in csv_text and ",=HYPERLINK" not in csv_text
    assert "<img src=x" not in page and "&lt;img src=x" in page


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = self.tables = 0
        self.text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "img" and dict(attrs)["src"].startswith("data:image/png;base64,"):
            self.images += 1
        self.tables += tag == "table"

    def handle_data(self, data):
        self.text += data


# ---------------------------------------------------------------- processes

def _kit(args, cwd, env):
    return subprocess.Popen([sys.executable, "-u", "-m", "kit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _env(tmp_path):
    return {**os.environ, "KIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _ran(output: str) -> list[str]:
    return re.findall(r"cell \d+/\d+ (\S+): running", output)


def test_two_processes_split_a_suite_and_run_every_cell_once(tmp_path, kaggle_root):
    path = write_suite(tmp_path, kaggle_root)
    env = _env(tmp_path)
    procs = [_kit(["bench", str(path)], tmp_path, env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = _ran(outs[0]) + _ran(outs[1])
    assert sorted(ran) == ["bars/full-s0", "bars/full-s1", "bars/probe-s0", "bars/probe-s1"], outs
    assert len(query(str(tmp_path / "lb.sqlite"), kind="suite")) == 4


def test_a_killed_suite_resumes_without_retraining_finished_cells(tmp_path, kaggle_root):
    """kill -9 once the third cell has checkpointed an epoch: the cells finished before are not run again, the
    killed one resumes (its member from its last checkpoint), and every cell is on the leaderboard once."""
    path = write_suite(tmp_path, kaggle_root, budget={"epochs": 3})
    env = _env(tmp_path)
    p = _kit(["bench", str(path)], tmp_path, env)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "bars/full-s0: running" in line:
            break
    killed = tmp_path / "runs" / "tiny" / "bars" / "full-s0"
    deadline = time.time() + 120
    while not list(killed.glob("members/*/last.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    finished = {f"bars/{d.name}" for d in (tmp_path / "runs" / "tiny" / "bars").iterdir()
                if (d / "cell.json").is_file()}
    assert {"bars/probe-s0", "bars/probe-s1"} <= finished
    again = _kit(["bench", str(path)], tmp_path, env)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    assert not set(_ran(out)) & finished and set(_ran(out)) >= {"bars/full-s1"}
    rows = query(str(tmp_path / "lb.sqlite"), kind="suite")
    assert len(rows) == 4 and rows["run_dir"].is_unique
    assert len(suite_rows(str(tmp_path / "lb.sqlite"), "tiny")) == 4


def test_a_cell_with_a_minutes_budget_runs_and_records_the_epochs_it_trained(tmp_path, kaggle_root, env,
                                                                             monkeypatch):
    """budget: {minutes: M}: the cell trains the epochs that fit (kit init's timing) and its record and leaderboard
    row name that recipe (its hash and epochs), not the entry's before the budget."""
    import kit.init
    monkeypatch.setattr(kit.init, "measure_speed", lambda size, batch=None, device=None, backbone=None:
                        {"train": 200.0, "predict": 1000.0, "what": "fixed"})
    path = write_suite(tmp_path, kaggle_root, seeds=[0], budget={"minutes": 1.02},
                       entries={"full": {"model.backbone": "test_resnet", "model.weights": "none",
                                         "model.strategy": "full", "model.channels_last": False,
                                         "train.batch_size": 8, "tta.modes": ["none"]}})
    suite = load_suite(path)
    [rec] = run_suite(suite, log=lambda m: None)
    epochs = rec["epochs"]
    assert 1 <= epochs < 10 and [r["epochs"] for r in plan_suite(suite)] == [epochs]
    [row] = query(str(tmp_path / "lb.sqlite"), kind="suite").to_dict("records")
    assert row["recipe_hash"] == rec["recipe_hash"]
