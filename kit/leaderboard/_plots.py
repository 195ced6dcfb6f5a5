"""PNG plots of the store's entries. matplotlib's Figure API (Agg), so no pyplot state and no display needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.metrics import get_metric

from ._render import metric_values, resolve_metric, seed_groups, seedless_name
from ._store import ensemble_size

_STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 11,
          "legend.fontsize": 10, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
          "axes.spines.right": False, "savefig.dpi": 120}
_NO_TTA = (None, "none")


def plot_ensemble_size(df_or_points, path, metric: str | None = None) -> Path:
    """Score against ensemble size. Takes query() rows (kind "ensemble" with extra["n_members"] or
    extra["ensemble_size"]; one line per blend_method, the best single member dashed), a {size: score} dict,
    (size, score) pairs, or a frame with size and score columns (and optionally blend_method)."""
    lines, best_member, metric = _ensemble_points(df_or_points, metric)
    if not lines:
        raise ValueError("no ensemble sizes to plot: need kind='ensemble' entries with extra['n_members'], "
                         "a {size: score} dict or (size, score) pairs")
    from matplotlib.ticker import MaxNLocator
    with _style():
        fig, ax = _figure(8, 4.8)
        for label, points in lines.items():
            sizes, scores = zip(*sorted(points))
            ax.plot(sizes, scores, marker="o", label=label)
        if best_member is not None:
            ax.axhline(best_member, color="grey", linestyle="--", label=f"best single member ({best_member:.4f})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="members in the ensemble", ylabel=_axis_label(metric), title="Score against ensemble size")
        ax.legend()
        return _save(fig, path)


def plot_tta_gain(df: pd.DataFrame, path, metric: str | None = None) -> Path:
    """Per member, the change in score from each TTA mode against no TTA, signed so that above zero is better."""
    metric = resolve_metric(df, metric)
    gains = _tta_gains(df, metric)
    if gains.empty:
        raise ValueError("no TTA gains to plot: need kind='tta' entries named after their member, with a "
                         "tta_mode other than 'none' and a score for tta_mode 'none' (or the member's own entry)")
    higher = get_metric(metric).higher_is_better
    from matplotlib.ticker import MaxNLocator
    with _style():
        fig, ax = _figure(8.5, 2.2 + 0.45 * len(gains) * max(1, len(gains.columns)) ** 0.5)
        height = 0.8 / len(gains.columns)
        y = np.arange(len(gains))
        for i, mode in enumerate(gains.columns):
            ax.barh(y - 0.4 + height * (i + 0.5), gains[mode], height=height, label=mode)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.set_yticks(y, gains.index)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        sign = "score(mode) − score(none)" if higher else "score(none) − score(mode): lower is better"
        ax.set(xlabel=f"{metric} gain over no TTA  [{sign}]", title="Test-time augmentation gain per member")
        fig.legend(title="TTA mode", loc="outside lower center", ncols=min(len(gains.columns), 6))
        return _save(fig, path)


def plot_seed_spread(df: pd.DataFrame, path, metric: str | None = None, top: int = 25) -> Path:
    """Per configuration (config_key), each seed's score as a dot and the mean as a bar; best at the top.
    Configurations with one seed are left out when some have more."""
    metric = resolve_metric(df, metric)
    groups = _seed_groups(df, metric)
    if not groups:
        raise ValueError(f"no scores on {metric} to plot")
    if any(len(v) > 1 for _, v in groups):
        groups = [(label, v) for label, v in groups if len(v) > 1]
    shown = groups[:top]
    with _style():
        fig, ax = _figure(8.5, 1.6 + 0.42 * len(shown))
        for y, (label, values) in enumerate(shown):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(values, y + np.asarray(jitter), color="tab:blue", alpha=0.75, zorder=3,
                       label="one seed" if y == 0 else None)
            ax.plot([np.mean(values)] * 2, [y - 0.3, y + 0.3], color="tab:red", linewidth=2.5, zorder=4,
                    label="mean" if y == 0 else None)
        ax.set_yticks(range(len(shown)), [f"{label}  (n={len(v)})" for label, v in shown])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        more = f" (best {len(shown)} of {len(groups)})" if len(groups) > len(shown) else ""
        ax.set(xlabel=_axis_label(metric), title=f"Spread over seeds{more}")
        ax.legend(loc="lower right" if get_metric(metric).higher_is_better else "lower left")
        return _save(fig, path)


def plot_tuning_history(df: pd.DataFrame, path, metric: str | None = None) -> Path:
    """Trials' scores against trial number (extra["trial"], else the order recorded) with the running best;
    one colour per recipe (study)."""
    metric = resolve_metric(df, metric)
    studies = _trials(df, metric)
    if not studies:
        raise ValueError(f"no tuning trials with a score on {metric} to plot (kind='trial')")
    from matplotlib.ticker import MaxNLocator
    better = np.fmax if get_metric(metric).higher_is_better else np.fmin
    with _style():
        fig, ax = _figure(8, 4.8)
        for i, (study, trials) in enumerate(studies.items()):
            color = f"C{i % 10}"
            best = better.accumulate(trials["score"].to_numpy())
            ax.scatter(trials["trial"], trials["score"], color=color, alpha=0.6, label=f"{study}: trials")
            ax.step(trials["trial"], best, where="post", color=color, linewidth=2,
                    label=f"{study}: best so far ({best[-1]:.4f})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="trial", ylabel=_axis_label(metric), title="Tuning history")
        ax.legend()
        return _save(fig, path)


def plot_all(df: pd.DataFrame, out_dir, metric: str | None = None) -> list[Path]:
    """Every plot the entries have data for, one set per metric, written into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    metrics = [metric] if metric else sorted(df["metric"].dropna().unique())
    paths = []
    for m in metrics:
        suffix = "" if len(metrics) == 1 else f".{m}"
        rows = df[metric_values(df, m).notna()]
        if _ensemble_points(rows, m)[0]:
            paths.append(plot_ensemble_size(rows, out_dir / f"ensemble_size{suffix}.png", m))
        if not _tta_gains(rows, m).empty:
            paths.append(plot_tta_gain(rows, out_dir / f"tta_gain{suffix}.png", m))
        if any(len(v) > 1 for _, v in _seed_groups(rows, m)):
            paths.append(plot_seed_spread(rows, out_dir / f"seed_spread{suffix}.png", m))
        if _trials(rows, m):
            paths.append(plot_tuning_history(rows, out_dir / f"tuning_history{suffix}.png", m))
    return paths


# ---- the data behind each plot ----

def _ensemble_points(source, metric):
    """({line label: [(size, score)]}, best single member's score or None, metric)."""
    if isinstance(source, dict):
        return {"ensemble": [(int(k), float(v)) for k, v in source.items()]}, None, metric or "score"
    if not isinstance(source, pd.DataFrame):
        return {"ensemble": [(int(k), float(v)) for k, v in source]}, None, metric or "score"
    if "kind" not in source:  # a plain frame of points
        method = source["blend_method"] if "blend_method" in source else pd.Series("ensemble", index=source.index)
        lines = {}
        for m, size, score in zip(method, source["size"], source["score"]):
            lines.setdefault(str(m), []).append((int(size), float(score)))
        return lines, None, metric or "score"
    metric = resolve_metric(source, metric)
    if metric is None:
        return {}, None, metric
    values = metric_values(source, metric)
    lines = {}
    for i, row in source[source["kind"] == "ensemble"].iterrows():
        size = ensemble_size(row["extra"])
        if size is not None and not pd.isna(values[i]):
            lines.setdefault(row["blend_method"] or "ensemble", []).append((int(size), float(values[i])))
    members = values[source["kind"] == "member"].dropna()
    best = None
    if len(members):
        best = members.max() if get_metric(metric).higher_is_better else members.min()
    return lines, best, metric


def _tta_gains(df, metric) -> pd.DataFrame:
    """Rows: "recipe: member"; columns: TTA modes; values: gain over no TTA, positive = better (mean over repeats)."""
    if df.empty or metric is None:
        return pd.DataFrame()
    values = metric_values(df, metric)
    rows = df.assign(value=values)[values.notna()]
    # member names repeat across recipes (every recipe's first member is "<backbone>-s0-f0"): key by both
    rows = rows.assign(name=rows["recipe_name"].fillna("?").astype(str) + ": " + rows["name"].astype(str))
    tta = rows[rows["kind"] == "tta"]
    plain = rows[(rows["kind"].isin(["tta", "member"])) & rows["tta_mode"].isin(_NO_TTA)]
    base = plain.groupby("name")["value"].mean()
    with_mode = tta[~tta["tta_mode"].isin(_NO_TTA)]
    if with_mode.empty:
        return pd.DataFrame()
    scores = with_mode.pivot_table(index="name", columns="tta_mode", values="value", aggfunc="mean")
    sign = 1.0 if get_metric(metric).higher_is_better else -1.0
    gains = scores.sub(base, axis=0).mul(sign).dropna(how="all")
    gains.columns.name = None
    return gains


def _seed_groups(df, metric) -> list[tuple[str, list[float]]]:
    """[(configuration label, seed scores)], best mean first."""
    if df.empty or metric is None:
        return []
    rows = df.assign(value=metric_values(df, metric)).dropna(subset=["value"])
    groups = []
    for _, g in rows.groupby(seed_groups(rows), sort=False):
        label = seedless_name(list(g["name"]), list(g["seed"]))
        first = g.iloc[0]
        if first["kind"] == "tta" and first["tta_mode"]:
            label += f" [TTA {first['tta_mode']}]"
        groups.append((label, list(g["value"].astype(float))))
    higher = get_metric(metric).higher_is_better
    return sorted(groups, key=lambda item: -np.mean(item[1]) if higher else np.mean(item[1]))


def _trials(df, metric) -> dict[str, pd.DataFrame]:
    if df.empty or metric is None:
        return {}
    rows = df[df["kind"] == "trial"]
    rows = rows.assign(value=metric_values(rows, metric)).dropna(subset=["value"])
    rows = rows.sort_values("created_at", kind="stable")
    studies = {}
    for study, g in rows.groupby(rows["recipe_name"].fillna("trials"), sort=False):
        extras = [e if isinstance(e, dict) else {} for e in g["extra"]]
        numbers = [e.get("trial", e.get("number")) for e in extras]
        if any(n is None for n in numbers):
            numbers = list(range(len(g)))  # the order they were recorded in
        studies[str(study)] = pd.DataFrame({"trial": numbers, "score": g["value"].to_numpy()}).sort_values("trial")
    return studies


def _axis_label(metric) -> str:
    if metric is None or metric == "score":
        return "score"
    return f"{metric} ({'higher' if get_metric(metric).higher_is_better else 'lower'} is better)"


def _style():
    import matplotlib
    return matplotlib.rc_context(_STYLE)


def _figure(width, height):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, min(height, 30)), layout="constrained")
    return fig, fig.subplots()


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
