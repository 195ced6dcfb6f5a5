"""kit.leaderboard: the store, ranking, submission scoring, exports and plots. Every test uses its own SQLite file
under tmp_path, never the default leaderboard/leaderboard.sqlite."""
import math
import multiprocessing
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from kit.leaderboard import (Entry, environment, export, leaderboard_report, plot_all, plot_ensemble_size,
                             plot_seed_spread, plot_tta_gain, plot_tuning_history, query, rank, record, record_score,
                             render_table, score_submission)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("KIT_LEADERBOARD_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # so that even the default store would land in tmp_path


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'lb.sqlite'}"


def member(name, score, seed=0, metric="accuracy", backbone="resnet18", kind="member", **kw):
    kw = {"recipe_name": "quickstart", "fold_scheme": "holdout", **kw}
    return Entry(kind=kind, name=name, metric=metric, score=score, seed=seed, backbone=backbone, **kw)


# ---- the store ----

def test_round_trip_keeps_every_field(url):
    full = Entry(kind="member", name="efficientnet_lite0-s3-f0", recipe_name="quickstart", recipe_hash="ab12cd34",
                 recipe={"seed": 3, "model": {"backbone": "efficientnet_lite0"}, "train": {"lr": 0.001}},
                 backbone="efficientnet_lite0", strategy="finetune", seed=3, fold_scheme="kfold5", tta_mode="flip",
                 blend_method="greedy", metric="log_loss", score=0.2345678901234,
                 scores={"accuracy": 0.91, "log_loss": 0.2345678901234, "f1_macro": 0.9}, public_score=0.25,
                 private_score=0.26, wall_time_s=123.5, device="cuda:0 (NVIDIA H100)",
                 versions={"python": "3.11.7", "torch": "2.4.0"}, git_commit="0123abcd", run_dir="runs/quickstart/1",
                 created_at=datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc),
                 extra={"fold": 0, "note": "ünïcode ✓", "list": [1, 2]})
    bare = Entry(kind="submission", name="sub.csv", metric="accuracy", score=None)
    ids = record([full, bare], url)
    assert len(ids) == 2 and ids[0] < ids[1]
    df = query(url)
    assert list(df["id"]) == ids
    assert Entry.from_row(df.iloc[0]) == full
    assert Entry.from_row(df.iloc[1]) == bare
    assert df["created_at"].iloc[0] == full.created_at


def test_a_changed_choice_replaces_its_ensemble_and_submission_rows(url):
    """After `kit predict --tta` changes a configuration's TTA choice (or the blend chosen changes), `kit submit`
    records its rows again: one row per blending method and one submission per run, not one more each time."""
    def rows(tta, chosen):
        base = {"recipe_name": "quickstart", "run_dir": "runs/quickstart", "tta_mode": tta}
        return [Entry(kind="ensemble", name=f"ensemble:{m}", metric="accuracy", score=0.9, blend_method=m,
                      extra={"chosen": m == chosen}, **base) for m in ("mean", "rank")] + \
            [Entry(kind="submission", name="quickstart:submission", metric="accuracy", score=0.9, blend_method=chosen,
                   **base)]
    record(rows("none", "mean"), url)
    record(rows("hflip", "rank"), url)
    df = query(url)
    assert sorted(df["name"]) == ["ensemble:mean", "ensemble:rank", "quickstart:submission"]
    assert set(df["tta_mode"]) == {"hflip"}
    chosen = df[df["kind"] == "ensemble"].set_index("name")["extra"].map(lambda e: e["chosen"])
    assert chosen.to_dict() == {"ensemble:mean": False, "ensemble:rank": True}
    # members keep one row per TTA mode they predicted
    record([member("m-s0", 0.9, tta_mode="none"), member("m-s0", 0.91, kind="tta", tta_mode="hflip")], url)
    record([member("m-s0", 0.9, tta_mode="none"), member("m-s0", 0.91, kind="tta", tta_mode="hflip")], url)
    assert len(query(url, kind=["member", "tta"])) == 2


def test_numpy_values_and_naive_times_are_stored(url):
    e = member("m", np.float32(0.5), seed=np.int64(2), scores={"accuracy": np.float64(0.5)},
               created_at=datetime(2024, 1, 1, 8, 0), extra={"probs": np.array([0.25, 0.75])})
    record([e], url)
    back = Entry.from_row(query(url).iloc[0])
    assert back.seed == 2 and back.score == 0.5 and back.extra["probs"] == [0.25, 0.75]
    assert back.created_at == datetime(2024, 1, 1, 8, 0, tzinfo=timezone.utc)  # naive means UTC


def _record_many(url, worker, n, barrier, recipe_name="r"):
    barrier.wait(timeout=60)
    for i in range(n):
        record([member(f"w{worker}-{i}", score=i / n, seed=worker, recipe_name=recipe_name)], url)


def test_concurrent_processes_lose_nothing(url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_record_many, args=(url, w, 25, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    df = query(url)
    assert len(df) == 100 and df["id"].is_unique and df["name"].is_unique


def test_query_filters(url, tmp_path):
    assert query(url).empty and not (tmp_path / "lb.sqlite").exists()  # reading does not create the file
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    record([member("a", 0.9, backbone="resnet18", created_at=t0),
            member("b", 0.8, backbone="vit_tiny", created_at=t0 + timedelta(days=2)),
            member("c", 0.3, metric="log_loss", created_at=t0 + timedelta(days=4)),
            Entry(kind="trial", name="t0", metric="accuracy", score=0.7, created_at=t0 + timedelta(days=6))], url)
    assert list(query(url, kind="trial")["name"]) == ["t0"]
    assert list(query(url, kind=["member", "trial"], metric="accuracy")["name"]) == ["a", "b", "t0"]
    assert list(query(url, backbone="vit_tiny")["name"]) == ["b"]
    assert list(query(url, since="2024-01-04", until=t0 + timedelta(days=6))["name"]) == ["c"]
    assert list(query(url, recipe="nope")["name"]) == []


def test_default_url_and_env_var(tmp_path, monkeypatch):
    record([member("here", 0.5)])
    assert (tmp_path / "leaderboard" / "leaderboard.sqlite").is_file()
    monkeypatch.setenv("KIT_LEADERBOARD_URL", f"sqlite:///{tmp_path / 'team.sqlite'}")
    record([member("team", 0.5)])
    assert list(query()["name"]) == ["team"]


def test_entry_checks_kind_and_metric():
    with pytest.raises(ValueError, match="member, tta, ensemble, trial, submission"):
        Entry(kind="model", name="x", metric="accuracy", score=1.0)
    with pytest.raises(ValueError, match="valid metrics"):
        Entry(kind="member", name="x", metric="acc", score=1.0)


def test_config_key_ignores_only_the_seed():
    a = member("m-s0", 0.5, seed=0, recipe={"train": {"seed": 0, "lr": 0.1}})
    b = member("m-s1", 0.6, seed=1, recipe={"train": {"seed": 1, "lr": 0.1}})
    c = member("m-s2", 0.6, seed=2, recipe={"train": {"seed": 2, "lr": 0.2}})
    d = member("m-s0", 0.6, seed=0, recipe={"train": {"seed": 0, "lr": 0.1}}, tta_mode="flip")
    assert a.config_key == b.config_key
    assert len({a.config_key, c.config_key, d.config_key}) == 3


def test_environment_reads_versions_without_importing_torch(tmp_path):
    code = ("import sys; from kit.leaderboard import environment; env = environment(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(env['versions']['python'], env['git_commit'])")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": repo_root})
    assert out.returncode == 0, out.stderr
    python, commit = out.stdout.split()
    assert python == ".".join(map(str, sys.version_info[:3])) and commit == "None"  # tmp_path is no git repo
    assert set(environment()["versions"]) >= {"python", "numpy", "torch", "timm", "albumentations", "ttach", "kit"}


# ---- ranking ----

def test_rank_higher_is_better():
    df = _frame([member("low", 0.70, seed=None), member("high", 0.90, seed=None), member("mid", 0.80, seed=None),
                 member("mid2", 0.80, seed=None)])
    ranked = rank(df, metric="accuracy")
    assert list(ranked["name"]) == ["high", "mid", "mid2", "low"]
    assert list(ranked["rank"]) == [1, 2, 2, 4]  # ties share the better place


def test_rank_lower_is_better_and_reads_other_metrics_from_scores():
    df = _frame([member("a", 0.50, metric="log_loss", seed=None), member("b", 0.20, metric="log_loss", seed=None),
                 member("c", 0.90, seed=None, scores={"accuracy": 0.9, "log_loss": 0.35})])
    ranked = rank(df, metric="log_loss")
    assert list(ranked["name"]) == ["b", "c", "a"] and list(ranked["score"]) == [0.20, 0.35, 0.50]
    assert list(rank(df, metric="accuracy")["name"]) == ["c"]  # a, b have no accuracy
    with pytest.raises(ValueError, match="several metrics"):
        rank(df)


def test_seeds_group_into_mean_std_and_count():
    df = _frame([member(f"resnet18-s{s}-f0", v, seed=s) for s, v in enumerate([0.80, 0.85, 0.90])]
                + [member("vit_tiny-s0-f0", 0.84, seed=0, backbone="vit_tiny")]
                + [Entry(kind="submission", name=f"sub{i}.csv", metric="accuracy", score=0.5) for i in range(2)])
    ranked = rank(df, metric="accuracy")
    top = ranked.iloc[0]
    assert top["name"] == "resnet18-s*-f0" and top["n"] == 3 and top["seeds"] == "0,1,2"
    assert top["score"] == pytest.approx(0.85) and top["score_std"] == pytest.approx(0.05)
    assert list(ranked["n"]) == [3, 1, 1, 1]  # entries without a seed are never averaged together
    assert math.isnan(ranked.iloc[1]["score_std"])
    assert len(rank(df, metric="accuracy", group_seeds=False)) == 6


# ---- submissions ----

SOLUTION = """id,label,Usage
1,cat,Public
2,dog,Public
3,cat,Public
4,bird,Public
5,dog,Private
6,cat,Private
7,bird,Private
8,dog,Ignored
"""


def test_score_label_submission(tmp_path):
    (tmp_path / "solution.csv").write_text(SOLUTION)
    (tmp_path / "sub.csv").write_text("id,label\n8,cat\n1,cat\n2,dog\n3,dog\n4,bird\n5,dog\n6,dog\n7,bird\n")
    result = score_submission(tmp_path / "sub.csv", tmp_path / "solution.csv", "accuracy")
    assert result == {"metric": "accuracy", "public": 0.75, "private": pytest.approx(2 / 3), "n_public": 4,
                      "n_private": 3}


def test_score_probability_submission_with_log_loss(tmp_path):
    (tmp_path / "solution.csv").write_text(SOLUTION)
    # Rows need not sum to 1: id 4's (2, 2, 4) becomes (0.25, 0.25, 0.5), as Kaggle rescales.
    (tmp_path / "sub.csv").write_text("id,bird,cat,dog\n1,0.1,0.8,0.1\n2,0.2,0.3,0.5\n3,0.3,0.6,0.1\n4,4,2,2\n"
                                      "5,0.1,0.1,0.8\n6,0.5,0.4,0.1\n7,0.9,0.05,0.05\n8,0.3,0.3,0.4\n")
    loss = score_submission(tmp_path / "sub.csv", tmp_path / "solution.csv", "log_loss")
    assert loss["public"] == pytest.approx(-(math.log(0.8) + math.log(0.5) + math.log(0.6) + math.log(0.5)) / 4)
    assert loss["private"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.9)) / 3)
    acc = score_submission(tmp_path / "sub.csv", tmp_path / "solution.csv", "accuracy", id_column="id")
    assert (acc["public"], acc["private"]) == (1.0, pytest.approx(2 / 3))


def test_score_submission_errors_name_the_file(tmp_path):
    (tmp_path / "solution.csv").write_text(SOLUTION)
    sol = tmp_path / "solution.csv"
    cases = {"missing.csv": ("id,label\n1,cat\n2,dog\n", r"missing\.csv: 6 of the 8 ids .* have no prediction"),
             "extra.csv": (SOLUTION.replace(",Public", "").replace(",Private", "").replace(",Ignored", "")
                           .replace("label,Usage", "label") + "9,cat\n", r"extra\.csv: 1 ids are not in"),
             "noid.csv": ("key,label\n1,cat\n", r"noid\.csv: no id column 'id'"),
             "dup.csv": ("id,label\n1,cat\n1,dog\n", r"dup\.csv: 1 ids appear more than once"),
             "badclass.csv": ("id,cat,dog\n" + "".join(f"{i},0.5,0.5\n" for i in range(1, 9)),
                              r"labels \['bird'\] have no probability column in .*badclass\.csv")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            score_submission(tmp_path / name, sol, "accuracy")
    (tmp_path / "bad_usage.csv").write_text("id,label,Usage\n1,cat,Test\n")
    with pytest.raises(ValueError, match=r"bad_usage\.csv: column 'Usage' holds \['test'\]"):
        score_submission(tmp_path / "bad_usage.csv", tmp_path / "bad_usage.csv", "accuracy")


def test_shake_up_from_recorded_submissions(url):
    for name, public, private in [("a", 0.9, 0.7), ("b", 0.8, 0.9), ("c", 0.7, 0.8)]:
        result = {"metric": "accuracy", "public": public, "private": private, "n_public": 10, "n_private": 30}
        record_score(result, name=name, url=url, device="cpu")
    df = query(url, kind="submission")
    assert df["extra"].iloc[0] == {"n_public": 10, "n_private": 30} and df["versions"].iloc[0]["python"]
    ranked = rank(df, by="public")
    assert list(ranked["name"]) == ["a", "b", "c"]
    assert list(ranked["private_rank"]) == [3, 1, 2]
    assert list(ranked["shake_up"]) == [2, -1, -1]  # private rank - public rank: a fell 2, b and c climbed 1
    assert list(rank(df, by="private")["name"]) == ["b", "c", "a"]


# ---- exports and plots ----

def _frame(entries):
    return pd.DataFrame([{"id": i, **vars(e)} for i, e in enumerate(entries, 1)])


def _everything(url):
    """A store with every kind of entry, enough for all four plots."""
    entries = []
    for s in range(3):
        for backbone, base in [("resnet18", 0.80), ("efficientnet_lite0", 0.85)]:
            name = f"{backbone}-s{s}-f0"
            # As kit.run records them: the member carries tta_mode "none", each other mode is a "tta" entry.
            entries.append(member(name, base + 0.01 * s, seed=s, backbone=backbone, wall_time_s=90.0 + s,
                                  tta_mode="none", extra={"fold": 0}))
            entries += [member(name, base + 0.01 * s + gain, seed=s, backbone=backbone, kind="tta", tta_mode=mode,
                               extra={"fold": 0}) for mode, gain in [("flip", 0.01), ("d4", 0.015)]]
    entries += [Entry(kind="ensemble", name=f"ensemble:{method}", blend_method=method, metric="accuracy",
                      score=0.86 + 0.01 * k, extra={key: k}) for k in range(1, 5)
                for method, key in [("greedy", "ensemble_size"), ("mean", "n_members")]]
    entries += [Entry(kind="trial", name=f"trial-{t}", recipe_name="tune", metric="accuracy", score=v,
                      extra={"trial": t, "params": {"lr": 10.0 ** -t}}) for t, v in enumerate([0.7, 0.8, 0.75, 0.85])]
    entries += [Entry(kind="submission", name=f"sub{i}.csv", metric="accuracy", score=0.9 - i / 100, public_score=p,
                      private_score=q) for i, (p, q) in enumerate([(0.9, 0.8), (0.85, 0.88)])]
    record(entries, url)
    return query(url)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.img_src, self.cells = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.img_src += [dict(attrs)["src"]] if tag == "img" else []
        self.cells += tag == "tr"


def test_exports_parse(url, tmp_path):
    df = _everything(url)
    ranked = rank(df)
    out = export(ranked, "csv", tmp_path / "lb.csv")
    back = pd.read_csv(out)
    assert len(back) == len(ranked) and list(back["rank"]) == list(ranked["rank"])

    md = export(ranked, None, tmp_path / "lb.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert set(table[1].replace("|", "").replace(":", "")) == {"-"}  # the header separator
    assert len(table) == 2 + len(ranked) and table[2].startswith("| 1 |")

    plots = plot_all(df, tmp_path / "plots")
    page = export(ranked, "html", tmp_path / "lb.html", plots=plots).read_text()
    parser = _Tags()
    parser.feed(page)
    assert "table" in parser.tags and parser.cells == 1 + len(ranked)
    assert len(parser.img_src) == 4 and all(s.startswith("data:image/png;base64,") for s in parser.img_src)
    assert '<td class="num">' in page and "<title>" in page


def test_report_for_the_cli(url, tmp_path):
    _everything(url)
    text = leaderboard_report(url, kind="member", width=200, color=False)
    assert "efficientnet_lite0-s*-f0" in text and "0.8600 ± 0.0100" in text
    line = leaderboard_report(url, by="public", out=tmp_path / "subs.html")
    assert "2 rows" in line and (tmp_path / "subs.html").stat().st_size > 1000
    assert leaderboard_report(f"sqlite:///{tmp_path / 'empty.sqlite'}").startswith("no entries")
    narrow = leaderboard_report(url, width=60, color=False, top=3)
    assert max(len(line) for line in narrow.splitlines()) <= 60 and "The best 3 of" in narrow
    assert render_table(query(url, kind="member")).row_count == 2


def test_plots_are_written(url, tmp_path):
    df = _everything(url)
    paths = [plot_ensemble_size(df, tmp_path / "a.png"), plot_ensemble_size({1: 0.8, 2: 0.85}, tmp_path / "b.png"),
             plot_tta_gain(df, tmp_path / "c.png"), plot_seed_spread(df, tmp_path / "d.png"),
             plot_tuning_history(df, tmp_path / "e.png")]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert sorted(p.name for p in plot_all(df, tmp_path / "all")) == [
        "ensemble_size.png", "seed_spread.png", "tta_gain.png", "tuning_history.png"]
    assert plot_all(df[df["kind"] == "submission"], tmp_path / "none") == []
    with pytest.raises(ValueError, match="kind='tta'"):
        plot_tta_gain(df[df["kind"] == "member"], tmp_path / "x.png")


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("KIT_TEST_POSTGRES_URL"), reason="set KIT_TEST_POSTGRES_URL")
def test_postgres_round_trip_and_concurrency():
    url = os.environ["KIT_TEST_POSTGRES_URL"]
    tag = f"pg-{os.getpid()}-{datetime.now().timestamp()}"
    e = member("pg", 0.5, recipe_name=tag, scores={"accuracy": 0.5}, extra={"x": [1]})
    (i,) = record([e], url)
    row = query(url, recipe=tag).iloc[0]
    assert row["id"] == i and Entry.from_row(row) == e
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    # the server outlives the test (CI reuses it): this run's rows carry their own recipe name, so rows left
    # by an earlier run neither count nor get replaced
    procs = [ctx.Process(target=_record_many, args=(url, w, 25, barrier, tag + "-many")) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    df = query(url, recipe=tag + "-many")
    assert len(df) == 100 and df["id"].is_unique and df["name"].is_unique


def test_tta_gain_keeps_members_of_different_recipes_apart(url):
    from kit.leaderboard._plots import _tta_gains
    entries = [member("m-s0-f0", 0.98, recipe_name="a", tta_mode="none"),
               member("m-s0-f0", 0.95, recipe_name="a", kind="tta", tta_mode="hflip"),
               member("m-s0-f0", 0.90, recipe_name="b", tta_mode="none")]  # same member name, other recipe
    record(entries, url)
    gains = _tta_gains(query(url), "accuracy")
    assert list(gains.index) == ["a: m-s0-f0"]
    assert gains.loc["a: m-s0-f0", "hflip"] == pytest.approx(-0.03)
