"""Names are data, never markup: a run named `r[bold red]Q[link=x]Z` prints as written (not as rich markup),
control characters show as escapes, the Markdown export escapes HTML, and the CSV export neutralises cells a
spreadsheet would run as formulas (the HTML export escaped already)."""
from __future__ import annotations

import pandas as pd
import pytest

from kit.cli import main
from kit.errors import printable
from kit.leaderboard import Entry, export, query, rank, record

NAME = "r[bold red]Q[link=x]Z"
HTML = '<img src=x onerror="alert(1)">'


def test_a_run_name_with_markup_prints_as_written(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: '{NAME}'\ndata: {{source: digits}}\nmodel: {{backbone: test_resnet, weights: none}}\n"
                      f"output_dir: {tmp_path / 'runs'}\n")
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"plan of {NAME}" in out and f"runs/{NAME}" in " ".join(out.split())


@pytest.fixture
def hostile_board(tmp_path):
    url = f"sqlite:///{tmp_path / 'lb.sqlite'}"
    names = [NAME, HTML, "=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "plain\x1b[31mred"]
    record([Entry(kind="member", name=n, metric="accuracy", score=0.5 + i / 100, recipe_name=n, backbone="b")
            for i, n in enumerate(names)], url)
    return url, names


def test_the_terminal_table_shows_names_as_text(hostile_board, capsys):
    url, names = hostile_board
    assert main(["leaderboard", "--url", url, "--no-group"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "plain\\x1b[31mred" in out and "\x1b[31m" not in out


def test_markdown_export_escapes_html(hostile_board, tmp_path, capsys):
    url, _ = hostile_board
    assert main(["leaderboard", "--url", url, "--no-group", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "<img" not in md and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in md
    assert "r\\[bold red\\]Q\\[link=x\\]Z" in md  # no Markdown link either
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == rows[0].count(" | ") for line in rows)  # no cell broke the table


def test_csv_export_neutralises_formulas(hostile_board, tmp_path):
    url, names = hostile_board
    out = export(rank(query(url), group_seeds=False), "csv", tmp_path / "lb.csv")
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    cells = [c for column in back.columns for c in back[column]]
    assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not _number(c))]
    assert "'=HYPERLINK(\"http://x\",\"y\")" in set(back["name"]) and "'-2+3" in set(back["name"])
    assert set(back["score"]) >= {"0.5", "0.51"}  # numbers stay numbers


def test_html_export_escapes(hostile_board, tmp_path):
    url, _ = hostile_board
    page = export(rank(query(url), group_seeds=False), "html", tmp_path / "lb.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_printable_shows_control_characters():
    assert printable("a\x1b]8;;http://x\x1b\\b\r") == "a\\x1b]8;;http://x\\x1b\\b\\r"
    assert printable("naïve 日本\tok\n") == "naïve 日本\tok\n"


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_a_bundle_readme_escapes_names():
    from types import SimpleNamespace as NS
    from kit.bundle import readme
    recipe = NS(name="<b>run</b>", model=NS(backbone="test_resnet"), submit=NS(format="label"))
    from kit.task import multiclass
    ens = NS(metric="accuracy", blend=NS(method=None, rule=None), recipe=recipe, classes=[HTML, "a|b"], left_out=[],
             task=multiclass([HTML, "a|b"]),
             configs=[NS(name=f"{HTML}-s0", members=[NS(recipe=recipe)], tta="none", weight=1.0, score=0.5)])
    text = readme(ens, {"versions": {"kit": "1", "torch": "2", "timm": "3"}, "source_run": "/runs/<x>",
                        "created": "today"}, "bundle")
    assert "<img" not in text and "<b>" not in text and "&lt;img src=x" in text and "a\\|b" in text
