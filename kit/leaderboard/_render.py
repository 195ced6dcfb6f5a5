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

BY = {"score": "score", "public": "public_score", "private": "private_score"}
_BY_TEXT = {"score": "validation score", "public": "public score", "private": "private score"}
_GROUP_FIELDS = ("kind", "recipe_name", "backbone", "strategy", "fold_scheme", "tta_mode", "blend_method", "metric")
RANKED_COLUMNS = ["rank", "name", *_GROUP_FIELDS, "seeds", "n", "score", "score_std", "public_score", "private_score",
                  "public_rank", "private_rank", "shake_up", "wall_time_s", "created_at", "config_key"]
FORMATS = {".csv": "csv", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def resolve_metric(df: pd.DataFrame, metric: str | None = None) -> str | None:
    """metric if given, else the one metric the entries were scored on (None for no entries)."""
    if metric is not None:
        return get_metric(metric).name
    present = sorted(df["metric"].dropna().unique()) if "metric" in df else []
    if len(present) > 1:
        raise ValueError(f"the entries were scored on several metrics ({', '.join(present)}); "
                         f"pass metric= one of them")
    return present[0] if present else None


def rank(df: pd.DataFrame, by: str = "score", metric: str | None = None, group_seeds: bool = True) -> pd.DataFrame:
    """Rank query() rows on `metric`, best first. by="score" ranks on validation score (read from `scores` for
    entries whose primary metric is another); "public"/"private" on the submission scores. With group_seeds,
    entries sharing config_key become one row: mean score, its sample std and the count n. When rows have both
    public and private scores, shake_up = private_rank - public_rank (negative: climbed on the private board)."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}; got {by!r}")
    metric = resolve_metric(df, metric)
    higher = get_metric(metric).higher_is_better if metric else True
    d = df.copy()
    if metric is not None:
        own = (d["metric"] == metric).to_numpy()
        from_scores = pd.to_numeric(pd.Series([s.get(metric) if isinstance(s, dict) else None for s in d["scores"]],
                                              index=d.index, dtype=object), errors="coerce")
        d["score"] = np.where(own, d["score"].astype(float), from_scores.astype(float))
        d.loc[~own, ["public_score", "private_score"]] = np.nan
        d["metric"] = metric
    d = d[d[BY[by]].notna()]
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


def _group(d: pd.DataFrame) -> pd.DataFrame:
    groups = d.groupby("config_key", sort=False)
    out = groups.agg(
        **{f: (f, "first") for f in _GROUP_FIELDS},
        n=("score" if d["score"].notna().any() else "name", "size"),
        score=("score", "mean"), score_std=("score", "std"),  # sample std (ddof=1); NaN for one seed
        public_score=("public_score", "mean"), private_score=("private_score", "mean"),
        wall_time_s=("wall_time_s", "mean"), created_at=("created_at", "max"),
    )
    out["name"] = groups.apply(lambda g: _group_name(list(g["name"]), list(g["seed"])), include_groups=False)
    out["seeds"] = groups["seed"].agg(lambda s: ",".join(str(int(x)) for x in sorted(s.dropna().unique())))
    return out.reset_index()


def _group_name(names: list[str], seeds: list) -> str:
    """'efficientnet_lite0-s0-f0' and '...-s1-f0' -> 'efficientnet_lite0-s*-f0': the seed token becomes '*'."""
    if len(set(names)) == 1:
        return names[0]
    patterns = {re.sub(rf"(^|[-_:.])s?{int(s)}(?=$|[-_:.])", r"\1s*" if f"s{int(s)}" in n else r"\1*", n, count=1)
                if not pd.isna(s) else n for n, s in zip(names, seeds)}
    return patterns.pop() if len(patterns) == 1 else f"{names[0]} (+{len(names) - 1})"


# ---- the display form shared by the terminal, Markdown and HTML ----

def _display(ranked: pd.DataFrame) -> tuple[list[str], list[bool], list[list[str]]]:
    """Headers, whether each column is numeric (right-aligned), and the formatted cells; empty columns dropped."""
    metric = ranked.attrs.get("metric") or "score"
    spec = [("rank", "#", True, str), ("name", "name", False, str), ("kind", "kind", False, str),
            ("recipe_name", "recipe", False, str), ("backbone", "backbone", False, str),
            ("strategy", "strategy", False, str), ("seeds", "seeds", False, str), ("fold_scheme", "folds", False, str),
            ("tta_mode", "TTA", False, str), ("blend_method", "blend", False, str), ("n", "n", True, str),
            ("score", f"{metric} (val)", True, None), ("public_score", "public", True, _num),
            ("private_score", "private", True, _num), ("shake_up", "shake-up", True, _shake),
            ("wall_time_s", "time", True, _duration), ("created_at", "recorded (UTC)", False, _when)]
    columns = []
    for key, header, numeric, fmt in spec:
        if key not in ranked:
            continue
        if key == "score":
            std = ranked["score_std"] if "score_std" in ranked else pd.Series(np.nan, index=ranked.index)
            cells = [_num(v) + (f" ± {_num(s)}" if not pd.isna(s) else "") for v, s in zip(ranked[key], std)]
        else:
            cells = ["" if _is_blank(v) else fmt(v) for v in ranked[key]]
        if key == "n" and all(c in ("", "1") for c in cells):
            continue
        if key in ("rank", "name", "score") or any(cells):
            columns.append((header, numeric, cells))
    headers = [c[0] for c in columns]
    numeric = [c[1] for c in columns]
    rows = [list(r) for r in zip(*(c[2] for c in columns))] if columns else []
    return headers, numeric, rows


def describe(ranked: pd.DataFrame) -> tuple[str, str]:
    """A title and a one-line explanation of what the table shows."""
    a = ranked.attrs
    metric = a.get("metric") or "score"
    title = f"kit leaderboard: {metric}"
    better = "higher" if a.get("higher_is_better", True) else "lower"
    parts = [f"ranked by {_BY_TEXT.get(a.get('by', 'score'))}, {better} is better",
             f"{len(ranked)} rows from {a.get('n_entries', len(ranked))} entries"]
    if a.get("group_seeds"):
        parts.append("seeds of one configuration averaged: mean ± sample std over n")
    if "shake_up" in ranked and ranked["shake_up"].notna().any():
        parts.append("shake-up: ▲ places gained, ▼ lost from public to private")
    return title, "; ".join(parts)


def render_table(df: pd.DataFrame, title: str | None = None):
    """A rich Table of a ranked frame (a query() frame is ranked first with the defaults)."""
    from rich.table import Table
    ranked = df if "rank" in df else rank(df)
    default_title, caption = describe(ranked)
    table = Table(title=title or default_title, caption=caption, header_style="bold", row_styles=["", "dim"])
    headers, numeric, rows = _display(ranked)
    for header, is_num in zip(headers, numeric):
        table.add_column(header, justify="right" if is_num else "left", no_wrap=is_num or header == "name")
    shake = headers.index("shake-up") if "shake-up" in headers else None
    for i, row in enumerate(rows):
        if shake is not None and row[shake]:
            color = "green" if row[shake].startswith("▲") else "red" if row[shake].startswith("▼") else ""
            row = [*row[:shake], f"[{color}]{row[shake]}[/]" if color else row[shake], *row[shake + 1:]]
        table.add_row(*row, style="bold" if i == 0 else None)
    return table


def export(df: pd.DataFrame, fmt: str | None, path, *, plots=(), title: str | None = None) -> Path:
    """Write df as csv (raw numbers), md (a pipe table) or html (a self-contained page with `plots`, PNG paths,
    embedded). fmt=None takes it from the file suffix."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "md", "html"):
        raise ValueError(f"unknown export format {fmt!r} for {path}; use csv, md or html (or a file ending in "
                         f"{', '.join(FORMATS)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        _csv_frame(df).to_csv(path, index=False)
    elif fmt == "md":
        path.write_text(to_markdown(df, title), encoding="utf-8")
    else:
        path.write_text(to_html(df, plots=plots, title=title), encoding="utf-8")
    return path


def to_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    ranked = df if "rank" in df else rank(df)
    default_title, caption = describe(ranked)
    headers, numeric, rows = _display(ranked)

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"## {title or default_title}", "", caption, "", line(headers),
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|", *(line(r) for r in rows)]
    return "\n".join(lines) + "\n"


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 2rem auto; max-width: 1280px; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; } h2 { font-size: 1.2rem; margin: 2.2rem 0 .6rem; }
.meta { color: #59636e; margin: 0 0 1.2rem; }
.scroll { overflow-x: auto; border: 1px solid #d1d9e0; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: .38rem .7rem; border-bottom: 1px solid #e6eaef; white-space: nowrap; text-align: left; }
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
    default_title, caption = describe(ranked)
    title = title or default_title
    headers, numeric, rows = _display(ranked)
    esc = html.escape

    def cell(tag, text, is_num):
        cls = ["num"] if is_num else []
        cls += ["up"] if text.startswith("▲") else ["down"] if text.startswith("▼") else []
        return f"<{tag}{' class=' + chr(34) + ' '.join(cls) + chr(34) if cls else ''}>{esc(text)}</{tag}>"

    head = "".join(cell("th", h, n) for h, n in zip(headers, numeric))
    body = "\n".join("<tr>" + "".join(cell("td", c, n) for c, n in zip(r, numeric)) + "</tr>" for r in rows)
    figures = []
    for p in map(Path, plots):
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        text = _PLOT_CAPTIONS.get(p.stem.split(".")[0], p.stem.replace("_", " "))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(text)}">'
                       f"<figcaption>{esc(text)}</figcaption></figure>")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{esc(caption)}.<br>Generated {generated}.</p>
<div class="scroll"><table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></div>
{'<h2>Plots</h2>' + chr(10).join(figures) if figures else ''}
</body></html>
"""


def _csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, (dict, list))).any():
            out[column] = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in out[column]]
    return out


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
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M") if pd.Timestamp(value).tzinfo \
        else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")
