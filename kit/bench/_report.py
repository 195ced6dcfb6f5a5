"""A suite's results from the leaderboard (kind "suite" rows): a table per data set (each entry's mean over seeds
with its 95 % Student t interval, its rank, wall time and throughput), the summary across data sets (mean score,
mean rank, Friedman's test and Nemenyi's critical difference), as text, Markdown, CSV or HTML with two plots.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kit.bench._stats import CONFIDENCE, Comparison, compare, ranks, t_interval
from kit.errors import RecipeError
from kit.leaderboard import markdown_text
from kit.metrics import get_metric


@dataclass(frozen=True)
class SuiteReport:
    name: str
    hash: str
    metric: str
    higher_is_better: bool
    score_kind: dict  # data set -> "test" (scored on its answers) or "validation"
    datasets: dict  # data set -> DataFrame, a row per entry
    summary: pd.DataFrame  # a row per entry: mean score over data sets, mean rank
    comparison: Comparison
    provenance: dict  # versions, machine, numerics of the cells


def suite_rows(url, name: str) -> pd.DataFrame:
    """The leaderboard's cells of suite `name`, of its latest hash (a changed suite file is another experiment)."""
    from kit.leaderboard import query
    df = query(url, kind="suite")
    if len(df):
        df = df[[isinstance(e, dict) and e.get("suite") == name for e in df["extra"]]]
    if not len(df):
        raise RecipeError(f"the leaderboard {url or '(default)'} has no cells of suite {name!r}; run it with: kit bench "
                          f"SUITE.yaml (its `name:` is the suite's name)")
    latest = df.iloc[-1]["extra"]["suite_hash"]
    return df[[e["suite_hash"] == latest for e in df["extra"]]].reset_index(drop=True)


def build_report(df: pd.DataFrame) -> SuiteReport:
    metric = df["metric"].iloc[0]
    higher = get_metric(metric).higher_is_better
    extra = pd.DataFrame(list(df["extra"]))
    cells = pd.concat([df[["seed", "wall_time_s", "backbone", "strategy", "versions"]].reset_index(drop=True),
                       extra], axis=1)
    datasets, kinds, table = {}, {}, {}
    for d, rows in cells.groupby("dataset", sort=False):
        kind = "test" if rows["test"].notna().all() else "validation"
        kinds[d] = kind
        out = []
        for e, g in rows.groupby("entry", sort=False):
            ci = t_interval(g[kind].tolist())
            out.append({"entry": e, "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "ci_half": ci.half,
                        "seeds": ci.n, "validation": float(g["validation"].mean()),
                        "wall_s": float(g["wall_time_s"].mean()),
                        "train_img_s": _mean(g["train_images_per_s"]), "infer_img_s": _mean(g["infer_images_per_s"]),
                        "backbone": g["backbone"].iloc[0], "strategy": g["strategy"].iloc[0]})
        frame = pd.DataFrame(out)
        r = ranks(dict(zip(frame["entry"], frame["mean"])), higher)
        frame["rank"] = frame["entry"].map(r)
        datasets[d] = frame.sort_values(["rank", "entry"]).reset_index(drop=True)
        table[d] = dict(zip(frame["entry"], frame["mean"]))
    comparison = compare(table, higher)
    summary = pd.DataFrame([{"entry": e, "mean_rank": comparison.mean_rank[e],
                             "mean_score": float(np.mean([table[d][e] for d in table])),
                             "datasets": sum(e in table[d] for d in table)} for e in comparison.entries])
    first = df.iloc[-1]
    provenance = {"versions": first["versions"] or {}, "machine": first["extra"].get("machine", {}),
                  "numerics": sorted({str(x.get("numerics")) for x in df["extra"]}),
                  "recipe_hashes": len(set(df["recipe_hash"]))}
    return SuiteReport(first["extra"]["suite"], first["extra"]["suite_hash"], metric, higher, kinds, datasets,
                       summary, comparison, provenance)


def _mean(s) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else None


def suite_report(url, name: str) -> SuiteReport:
    return build_report(suite_rows(url, name))


# ---------------------------------------------------------------- views

def _ci(row) -> str:
    return f"{row['mean']:.4f} ± {row['ci_half']:.4f}" if row["seeds"] > 1 else f"{row['mean']:.4f} (1 seed)"


def _speed(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.0f}"


def _header(r: SuiteReport) -> list[str]:
    direction = "higher" if r.higher_is_better else "lower"
    return [f"suite {r.name} (hash {r.hash}): {r.metric}, {direction} is better; mean over seeds with a "
            f"{CONFIDENCE:.0%} Student t confidence interval (t over the seeds of each entry); rank 1 is the best, "
            f"ties share their mean rank"]


def dataset_rows(r: SuiteReport, d: str) -> tuple[list[str], list[list[str]]]:
    head = ["rank", "entry", f"{r.score_kind[d]} {r.metric}", "seeds", f"validation {r.metric}", "wall s",
            "train img/s", "infer img/s"]
    rows = [[f"{x['rank']:g}", x["entry"], _ci(x), str(x["seeds"]), f"{x['validation']:.4f}", f"{x['wall_s']:.0f}",
             _speed(x["train_img_s"]), _speed(x["infer_img_s"])] for _, x in r.datasets[d].iterrows()]
    return head, rows


def summary_rows(r: SuiteReport) -> tuple[list[str], list[list[str]]]:
    head = ["entry", "mean rank", f"mean {r.metric}", "data sets"]
    rows = [[x["entry"], f"{x['mean_rank']:.2f}", f"{x['mean_score']:.4f}", str(x["datasets"])]
            for _, x in r.summary.iterrows()]
    return head, rows


def render_text(r: SuiteReport) -> str:
    lines = _header(r)
    for d in r.datasets:
        head, rows = dataset_rows(r, d)
        lines += ["", f"{d} (scored on {r.score_kind[d]})", *_plain(head, rows)]
    head, rows = summary_rows(r)
    lines += ["", f"across {r.comparison.n_datasets} data sets", *_plain(head, rows), "", r.comparison.why,
              _provenance(r)]
    return "\n".join(lines)


def _plain(head, rows) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]


def _provenance(r: SuiteReport) -> str:
    v, m = r.provenance["versions"], r.provenance["machine"]
    return (f"made with kit {v.get('kit')}, torch {v.get('torch')}, timm {v.get('timm')} on {m.get('cpu')} "
            f"({m.get('cores')} cores, {m.get('threads')} threads{', ' + m['gpu'] if m.get('gpu') else ''}); "
            f"numerics {'; '.join(r.provenance['numerics'])}")


def render_markdown(r: SuiteReport) -> str:
    def table(head, rows):
        return ["| " + " | ".join(map(markdown_text, head)) + " |", "|" + "---|" * len(head)] + \
            ["| " + " | ".join(map(markdown_text, row)) + " |" for row in rows]
    lines = [f"# Suite {markdown_text(r.name)}", "", markdown_text(_header(r)[0])]
    for d in r.datasets:
        head, rows = dataset_rows(r, d)
        lines += ["", f"## {markdown_text(d)} (scored on {r.score_kind[d]})", "", *table(head, rows)]
    head, rows = summary_rows(r)
    lines += ["", f"## Across {r.comparison.n_datasets} data sets", "", *table(head, rows), "",
              markdown_text(r.comparison.why), "", markdown_text(_provenance(r))]
    return "\n".join(lines) + "\n"


def _csv_safe(value) -> str:
    """A spreadsheet does not evaluate it: text starting with = + - @ (not a number) gets a leading quote."""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def render_csv(r: SuiteReport) -> str:
    """One row per data set and entry, then one per entry for the summary (dataset '*')."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["suite", "suite_hash", "dataset", "entry", "score_kind", "metric", "mean", "ci_low", "ci_high",
                "seeds", "rank", "mean_rank", "validation", "wall_s", "train_img_s", "infer_img_s"])
    for d, frame in r.datasets.items():
        for _, x in frame.iterrows():
            w.writerow(map(_csv_safe, [r.name, r.hash, d, x["entry"], r.score_kind[d], r.metric, x["mean"],
                                       x["ci_low"], x["ci_high"], x["seeds"], x["rank"], "", x["validation"],
                                       x["wall_s"], x["train_img_s"], x["infer_img_s"]]))
    for _, x in r.summary.iterrows():
        w.writerow(map(_csv_safe, [r.name, r.hash, "*", x["entry"], "", r.metric, x["mean_score"], "", "", "", "",
                                   x["mean_rank"], "", "", "", ""]))
    return buf.getvalue()


def render_html(r: SuiteReport) -> str:
    esc = html.escape

    def table(head, rows):
        return ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
                + "</tbody></table>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>suite {esc(r.name)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:nth-child(2),th:nth-child(2)"
             "{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>Suite {esc(r.name)}</h1><p>{esc(_header(r)[0])}</p>"]
    for d in r.datasets:
        head, rows = dataset_rows(r, d)
        parts.append(f"<h2>{esc(d)} <small>(scored on {esc(r.score_kind[d])})</small></h2>{table(head, rows)}")
    head, rows = summary_rows(r)
    parts.append(f"<h2>Across {r.comparison.n_datasets} data sets</h2>{table(head, rows)}"
                 f"<p>{esc(r.comparison.why)}</p>")
    for title, png in (("Score with its interval, per data set", plot_scores(r)),
                       ("Mean rank with Nemenyi's critical difference", plot_ranks(r))):
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'>")
    parts.append(f"<p><small>{esc(_provenance(r))}</small></p></body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_scores(r: SuiteReport) -> bytes:
    """One panel per data set: each entry's mean with its interval (error bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(r.datasets)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 0.45 * max(len(f) for f in r.datasets.values()) + 1.6),
                             squeeze=False)
    for ax, (d, frame) in zip(axes[0], r.datasets.items()):
        y = np.arange(len(frame))[::-1]
        ax.errorbar(frame["mean"], y, xerr=frame["ci_half"], fmt="o", capsize=3)
        ax.set_yticks(y, frame["entry"])
        ax.set_title(f"{d} ({r.score_kind[d]})", fontsize=10)
        ax.set_xlabel(r.metric)
        ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_ranks(r: SuiteReport) -> bytes:
    """Mean ranks, best at the top, with a bar as long as Nemenyi's critical difference from the best."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = r.summary
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(s) + 1.4))
    y = np.arange(len(s))[::-1]
    ax.plot(s["mean_rank"], y, "o")
    ax.set_yticks(y, s["entry"])
    cd = r.comparison.critical_difference
    if np.isfinite(cd):
        best = s["mean_rank"].iloc[0]
        ax.errorbar([best + cd / 2], [y[0] + 0.4], xerr=[cd / 2], fmt="none", capsize=4, color="C3")
        ax.text(best + cd / 2, y[0] + 0.55, f"critical difference {cd:.2f}", ha="center", color="C3", fontsize=9)
        ax.set_ylim(-0.5, y[0] + 0.9)
    ax.set_xlabel("mean rank (1 = best)")
    ax.invert_xaxis()
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


RENDERERS = {"md": render_markdown, "csv": render_csv, "html": render_html, "text": render_text}
