"""Ranking and the three views of a ranked table: a rich Table for the terminal, CSV / Markdown / HTML files."""
from __future__ import annotations

import base64
import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kit.metrics import get_metric
from kit.errors import RecipeError

from ._store import ensemble_size

BY = {"score": "score", "public": "public_score", "private": "private_score"}
_BY_TEXT = {"score": "validation score", "public": "public score", "private": "private score"}
_GROUP_FIELDS = ("kind", "recipe_name", "backbone", "strategy", "fold_scheme", "tta_mode", "blend_method", "n_members",
                 "env", "metric")
RANKED_COLUMNS = ["rank", "name", *_GROUP_FIELDS, "seeds", "n", "score", "score_std", "public_score", "private_score",
                  "public_rank", "private_rank", "shake_up", "wall_time_s", "created_at", "config_key"]
FORMATS = {".csv": "csv", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def resolve_metric(df: pd.DataFrame, metric: str | None = None) -> str | None:
    """metric if given, else the one metric the entries were scored on (None for no entries)."""
    if metric is not None:
        try:
            return get_metric(metric).name
        except ValueError as e:  # an unknown name: the message lists the valid ones
            raise RecipeError(str(e)) from None
    present = sorted(df["metric"].dropna().unique()) if "metric" in df else []
    if len(present) > 1:
        raise RecipeError(f"the entries were scored on several metrics ({', '.join(present)}); "
                         f"pass metric= one of them")
    return present[0] if present else None


def metric_values(df: pd.DataFrame, metric: str) -> pd.Series:
    """Each entry's validation score on `metric`: its primary score, or the value in its `scores` dict."""
    from_scores = [s.get(metric) if isinstance(s, dict) else None for s in df["scores"]]
    from_scores = pd.to_numeric(pd.Series(from_scores, index=df.index, dtype=object), errors="coerce")
    return pd.Series(np.where(df["metric"] == metric, df["score"].astype(float), from_scores.astype(float)),
                     index=df.index)


def rank(df: pd.DataFrame, by: str = "score", metric: str | None = None, group_seeds: bool = True) -> pd.DataFrame:
    """Rank query() rows on `metric`, best first. by="score" ranks on validation score (read from `scores` for
    entries whose primary metric is another); "public"/"private" on the submission scores. With group_seeds,
    seeded entries sharing config_key become one row: mean score, its sample std and the count n. When rows have both
    public and private scores, shake_up = private_rank - public_rank (negative: climbed on the private board)."""
    if by not in BY:
        raise RecipeError(f"by must be one of {', '.join(BY)}; got {by!r}")
    metric = resolve_metric(df, metric)
    higher = get_metric(metric).higher_is_better if metric else True
    d = df.copy()
    d["n_members"] = pd.array([ensemble_size(e) for e in d["extra"]], dtype="Int64")  # tells ensembles apart
    d["env"] = [environment_text(e) for e in d["extra"]]
    if metric is not None:
        d["score"] = metric_values(d, metric)
        d.loc[d["metric"] != metric, ["public_score", "private_score"]] = np.nan  # those scored another metric
        d["metric"] = metric
    d = d[d[BY[by]].notna()]
    if d.empty:
        out = pd.DataFrame(columns=RANKED_COLUMNS)
        out.attrs.update(metric=metric, by=by, higher_is_better=higher, group_seeds=group_seeds, n_entries=0)
        return out
    out = _group(d) if group_seeds else d.assign(
        n=1, score_std=np.nan, seeds=[("" if pd.isna(s) else str(s)) for s in d["seed"]])
    value = out[BY[by]].astype(float).round(12)  # mean of 0.8, 0.9, 1.0 must tie with 0.9
    out["rank"] = value.rank(method="min", ascending=not higher).astype(int)
    out = out.sort_values(["rank", "name"], kind="stable").reset_index(drop=True)
    both = out["public_score"].notna() & out["private_score"].notna()
    for side in ("public", "private"):
        ranks = out[f"{side}_score"].where(both).rank(method="min", ascending=not higher)
        out[f"{side}_rank"] = ranks.astype("Int64")
    out["shake_up"] = out["private_rank"] - out["public_rank"]
    out = out[RANKED_COLUMNS]
    out.attrs.update(metric=metric, by=by, higher_is_better=higher, group_seeds=group_seeds, n_entries=len(d))
    return out


def environment_text(extra) -> str:
    """The numerics-changing choices a result was computed with (kit.record: the plan's memory format,
    threads and depthwise gradients), e.g. 'channels_last, 2 threads'; '' when not recorded."""
    env = extra.get("env") if isinstance(extra, dict) else None
    if not isinstance(env, dict):
        return ""
    parts = [str(env["memory_format"])] if env.get("memory_format") else []
    if env.get("threads"):
        parts.append(f"{env['threads']} threads")
    if env.get("depthwise_grad"):
        parts.append(f"depthwise {env['depthwise_grad']}")
    return ", ".join(parts)


def seed_groups(df: pd.DataFrame) -> pd.Series:
    """The key that groups seeds of one configuration: config_key, or the row's own id when it has no seed
    (two submissions or two ensembles without a seed are different results, not repeats)."""
    own = "id:" + (df["id"].astype(str) if "id" in df else pd.Series(df.index.astype(str), index=df.index))
    return df["config_key"].where(df["seed"].notna(), own)


def _group(d: pd.DataFrame) -> pd.DataFrame:
    groups = d.groupby(seed_groups(d).rename("group"), sort=False)
    out = groups.agg(
        **{f: (f, "first") for f in _GROUP_FIELDS},
        n=("name", "size"),
        score=("score", "mean"), score_std=("score", "std"),  # sample std (ddof=1); NaN for a single seed
        public_score=("public_score", "mean"), private_score=("private_score", "mean"),
        wall_time_s=("wall_time_s", "mean"), created_at=("created_at", "max"),
    )
    out["name"] = pd.Series({key: seedless_name(list(g["name"]), list(g["seed"])) for key, g in groups})
    out["seeds"] = groups["seed"].agg(lambda s: ",".join(str(int(x)) for x in sorted(s.dropna().unique())))
    out["config_key"] = groups["config_key"].first()
    return out.reset_index(drop=True)


def seedless_name(names: list[str], seeds: list) -> str:
    """'efficientnet_lite0-s0-f0' and '...-s1-f0' -> 'efficientnet_lite0-s*-f0': the seed token becomes '*'."""
    if len(set(names)) == 1:
        return names[0]
    patterns = {_without_seed(n, s) for n, s in zip(names, seeds)}
    return patterns.pop() if len(patterns) == 1 else f"{names[0]} (+{len(names) - 1} more)"


def _without_seed(name: str, seed) -> str:
    if pd.isna(seed):
        return name
    for prefix in ("seed", "s", ""):  # a token between - _ : . or the ends: 'x-s3', 'x_seed3', 'x-3'
        new, found = re.subn(rf"(?<![^-_:.]){prefix}{int(seed)}(?![^-_:.])", f"{prefix}*", name, count=1)
        if found:
            return new
    return name


# ---- the display form shared by the terminal, Markdown and HTML ----

_ESSENTIAL = ("#", "name")  # never dropped, even when empty or the same in every row
# The terminal drops columns in this order until the table fits its width.
_DROP_ORDER = ("recorded (UTC)", "env", "time", "folds", "strategy", "recipe", "seeds", "blend", "n", "kind", "members",
               "TTA", "backbone")


def _display(ranked: pd.DataFrame, width: int | None = None) -> tuple[list[str], list[bool], list[list[str]], dict]:
    """Headers, whether each column is numeric (right-aligned), the formatted rows, and {header: value} of the
    columns left out because every row holds the same value (the caller states them once, above the table).
    Empty columns are left out; with `width`, so are the least useful ones until the table fits."""
    metric = ranked.attrs.get("metric") or "score"
    spec = [("rank", "#", True, str), ("name", "name", False, str), ("kind", "kind", False, str),
            ("recipe_name", "recipe", False, str), ("backbone", "backbone", False, str),
            ("strategy", "strategy", False, str), ("seeds", "seeds", False, str), ("fold_scheme", "folds", False, str),
            ("tta_mode", "TTA", False, str), ("blend_method", "blend", False, str),
            ("n_members", "members", True, str), ("env", "env", False, str), ("n", "n", True, str),
            ("score", f"{metric} (val)", True, None), ("public_score", "public", True, _num),
            ("private_score", "private", True, _num), ("shake_up", "shake-up", True, _shake),
            ("wall_time_s", "time", True, _duration), ("created_at", "recorded (UTC)", False, _when)]
    columns, constant = [], {}
    for key, header, numeric, fmt in spec:
        if key not in ranked:
            continue
        if key == "score":
            std = ranked["score_std"] if "score_std" in ranked else pd.Series(np.nan, index=ranked.index)
            cells = [_num(v) + (f" ± {_num(s)}" if not pd.isna(s) else "") for v, s in zip(ranked[key], std)]
        else:
            cells = ["" if _is_blank(v) else fmt(v) for v in ranked[key]]
        if header in _ESSENTIAL:
            columns.append((header, numeric, cells))
        elif key == "n" and all(c in ("", "1") for c in cells) or not any(cells):
            continue
        elif len(cells) > 1 and len(set(cells)) == 1 and key in _GROUP_FIELDS + ("seeds",):
            constant[header] = cells[0]
        else:
            columns.append((header, numeric, cells))
    if width is not None:
        def table_width():  # each column: its widest cell + 3 for padding and border
            return 1 + sum(3 + max(len(h), *(len(c) for c in cells)) for h, _, cells in columns)
        for header in _DROP_ORDER:
            if table_width() <= width:
                break
            columns = [c for c in columns if c[0] != header]
    headers = [c[0] for c in columns]
    numeric = [c[1] for c in columns]
    rows = [list(r) for r in zip(*(c[2] for c in columns))]
    return headers, numeric, rows, constant


def describe(ranked: pd.DataFrame, constant: dict | None = None) -> tuple[str, list[str]]:
    """A title and the lines that explain what the table shows."""
    a = ranked.attrs
    metric = a.get("metric") or "score"
    better = "higher" if a.get("higher_is_better", True) else "lower"
    n, n_rows, n_entries = len(ranked), a.get("n_rows", len(ranked)), a.get("n_entries", len(ranked))
    shown = f"The best {n} of {n_rows} rows" if n < n_rows else f"{n} row{'s' * (n != 1)}"
    lines = [f"Ranked by {_BY_TEXT.get(a.get('by', 'score'))}, {better} is better. "
             f"{shown} from {n_entries} entr{'ies' if n_entries != 1 else 'y'}."]
    if constant:
        lines.append("All rows: " + ", ".join(f"{k} {v}" for k, v in constant.items()) + ".")
    if a.get("group_seeds") and "n" in ranked and (ranked["n"] > 1).any():
        lines.append("Seeds of one configuration are one row: mean ± sample std over n entries.")
    if "shake_up" in ranked and ranked["shake_up"].notna().any():
        lines.append("Shake-up: places gained (▲) or lost (▼) from the public to the private leaderboard.")
    return f"kit leaderboard: {metric}", lines


def render_table(df: pd.DataFrame, title: str | None = None, width: int | None = None):
    """A rich Table of a ranked frame (a query() frame is ranked first with the defaults); with `width`
    (the terminal's), the least useful columns are left out until it fits."""
    from rich.table import Table
    ranked = df if "rank" in df else rank(df)
    headers, numeric, rows, constant = _display(ranked, width)
    default_title, notes = describe(ranked, constant)
    table = Table(title=_term(title or default_title), caption=_term("\n".join(notes)), header_style="bold",
                  caption_justify="left", title_justify="left")
    for header, is_num in zip(headers, numeric):
        table.add_column(_term(header), justify="right" if is_num else "left", no_wrap=is_num or header == "name")
    shake = headers.index("shake-up") if "shake-up" in headers else None
    for i, row in enumerate(rows):
        row = [_term(c) for c in row]  # names are text, not rich markup
        if shake is not None and row[shake][:1] in ("▲", "▼"):
            color = "green" if row[shake].startswith("▲") else "red"
            row = [*row[:shake], f"[{color}]{row[shake]}[/]", *row[shake + 1:]]
        table.add_row(*row, style="bold" if i == 0 else None)
    return table


def export(df: pd.DataFrame, fmt: str | None, path, *, plots=(), title: str | None = None, force: bool = False,
           protect=()) -> Path:
    """Write df as csv (raw numbers), md (a pipe table) or html (a self-contained page with `plots`, PNG paths,
    embedded). fmt=None takes it from the file suffix. Through kit's one writer of user-named files
    (kit.rundir.write_new_file): an existing file is kept unless force, `protect` (the database read) always."""
    from kit.rundir import write_new_file
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    text = export_text(df, fmt, plots=plots, title=title, where=f" for {path}")
    return write_new_file(path, text, force=force, protect=protect)


def export_text(df: pd.DataFrame, fmt: str | None, *, plots=(), title: str | None = None, where: str = "") -> str:
    """The csv, md or html text of df (what export writes; `kit leaderboard --format F` prints it)."""
    if fmt not in ("csv", "md", "html"):
        raise RecipeError(f"unknown export format {fmt!r}{where}; use csv, md or html (or a file ending in "
                          f"{', '.join(FORMATS)})")
    if fmt == "csv":
        return _csv_frame(df).to_csv(index=False)
    if fmt == "md":
        return to_markdown(df, title)
    return to_html(df, plots=plots, title=title)


# Markdown renders raw HTML (escaped as entities) and reads these characters as table cells, emphasis, code and
# links: each is escaped with a backslash
_MD_SPECIAL = re.compile(r"([\\`*|\[\]])")


def markdown_text(text) -> str:
    """`text` as literal Markdown: HTML escaped (a name `<img onerror=...>` stays text), cell, emphasis, code and
    link characters escaped, line breaks made spaces."""
    text = html.escape(str(text), quote=True)
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def to_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    ranked = df if "rank" in df else rank(df)
    headers, numeric, rows, constant = _display(ranked)
    default_title, notes = describe(ranked, constant)

    def line(cells):
        return "| " + " | ".join(markdown_text(c) for c in cells) + " |"

    lines = [f"## {markdown_text(title or default_title)}", "", *map(markdown_text, notes), "", line(headers),
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|", *(line(r) for r in rows)]
    return "\n".join(lines) + "\n"


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 2rem auto; max-width: 1600px; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; } h2 { font-size: 1.2rem; margin: 2.2rem 0 .6rem; }
.meta { color: #59636e; margin: 0 0 1.2rem; }
.scroll { overflow-x: auto; border: 1px solid #d1d9e0; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { padding: .35rem .55rem; border-bottom: 1px solid #e6eaef; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; } tbody tr:hover { background: #eef4ff; }
tbody tr:first-child td { font-weight: 600; }
.up { color: #1a7f37; } .down { color: #cf222e; }
figure { margin: 0 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #e6eaef; }
figcaption { color: #59636e; font-size: .9rem; margin-top: .3rem; }
"""
_PLOT_CAPTIONS = {
    "ensemble_size": "Score against the number of members in the ensemble.",
    "tta_gain": "Change in score from each test-time augmentation mode, per member (above zero: better).",
    "seed_spread": "Each seed's score as a dot and the mean as a bar, per configuration.",
    "tuning_history": "Score of each tuning trial and the best so far.",
}


def to_html(df: pd.DataFrame, plots=(), title: str | None = None) -> str:
    ranked = df if "rank" in df else rank(df)
    headers, numeric, rows, constant = _display(ranked)
    default_title, notes = describe(ranked, constant)
    title = title or default_title
    esc = html.escape

    def cell(tag, text, is_num):
        classes = " ".join(c for c, on in (("num", is_num), ("up", text.startswith("▲")),
                                            ("down", text.startswith("▼"))) if on)
        return f'<{tag} class="{classes}">{esc(text)}</{tag}>' if classes else f"<{tag}>{esc(text)}</{tag}>"

    head = "".join(cell("th", h, n) for h, n in zip(headers, numeric))
    body = "\n".join("<tr>" + "".join(cell("td", c, n) for c, n in zip(r, numeric)) + "</tr>" for r in rows)
    figures = []
    for p in map(Path, plots):
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        text = _PLOT_CAPTIONS.get(p.stem.split(".")[0], p.stem.replace("_", " "))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(text)}">'
                       f"<figcaption>{esc(text)}</figcaption></figure>")
    plots_html = "<h2>Plots</h2>\n" + "\n".join(figures) if figures else ""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{"<br>".join(map(esc, notes))}<br>Generated {generated}.</p>
<div class="scroll"><table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></div>
{plots_html}
</body></html>
"""


def _csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, (dict, list))).any():
            out[column] = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in out[column]]
        if out[column].map(lambda v: isinstance(v, str)).any():
            out[column] = [_cell(v) for v in out[column]]
    return out


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def _cell(value):
    """A CSV text cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe (OWASP's
    advice against CSV injection); numbers stay numbers."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _term(text) -> str:
    """A cell as terminal text: rich markup escaped, control characters shown as escapes."""
    from rich.markup import escape
    from kit.errors import printable
    return escape(printable(text))


def _is_blank(value) -> bool:
    return value is None or (not isinstance(value, (dict, list)) and pd.isna(value)) or value == ""


def _num(value) -> str:
    return "" if _is_blank(value) else f"{float(value):.4f}"


def _shake(value) -> str:
    value = int(value)  # private_rank - public_rank: negative means the row climbed
    return "=" if value == 0 else f"▲{-value}" if value < 0 else f"▼{value}"


def _duration(seconds) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m {s:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _when(value) -> str:
    stamp = pd.Timestamp(value)
    return (stamp.tz_convert("UTC") if stamp.tzinfo else stamp).strftime("%Y-%m-%d %H:%M")
