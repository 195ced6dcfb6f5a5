"""Record every result with what produced it; query, rank, render and plot them; score Kaggle-style submissions.

The store is one SQL table reached through SQLAlchemy: by default the SQLite file leaderboard/leaderboard.sqlite
under the current directory, or any URL (a team's PostgreSQL) given as `url=` or in $KIT_LEADERBOARD_URL.

    from kit.leaderboard import Entry, environment, record, query, rank, export
    record([Entry(kind="member", name="efficientnet_lite0-s0-f0", metric="accuracy", score=0.91, seed=0,
                  backbone="efficientnet_lite0", device="cuda:0", **environment())])
    export(rank(query(), by="score"), "html", "leaderboard.html")

Inside: _store.py (Entry, record, query), _render.py (rank, tables, exports), _plots.py (PNG plots); this file
scores submissions and puts the pieces together for `kit leaderboard` and `kit score`.
"""
from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import SubmissionError
from kit.metrics import get_metric, score as metric_score

from ._plots import plot_all, plot_ensemble_size, plot_seed_spread, plot_tta_gain, plot_tuning_history
from ._render import (FORMATS, export, export_text, markdown_text, rank, render_table, resolve_metric, to_html,
                      to_markdown)
from ._store import KINDS, URL_ENV, Entry, compute_config_key, environment, query, record, resolve_url, sqlite_path

__all__ = ["Entry", "KINDS", "URL_ENV", "compute_config_key", "environment", "export", "export_text",
           "leaderboard_report", "markdown_text", "plot_all", "plot_ensemble_size", "plot_seed_spread", "plot_tta_gain",
           "plot_tuning_history", "query", "rank", "record", "record_score", "render_table", "resolve_metric",
           "resolve_url", "score_entry", "score_submission", "sqlite_path", "to_html", "to_markdown"]
_USAGES = ("public", "private", "ignored")


def leaderboard_report(url=None, *, by: str = "score", metric: str | None = None, group_seeds: bool = True,
                       top: int | None = None, out=None, fmt: str | None = None, color: bool | None = None,
                       width: int | None = None, force: bool = False, **filters) -> str:
    """Query (filters: kind, recipe, backbone, since, until), rank, keep the best `top` rows, then return the table
    as terminal text (neither out nor fmt; ANSI colours when stdout is a terminal), or the export as text (fmt
    without out: csv, md, or html with the plots embedded), or write the export to `out` (format `fmt` or from its
    suffix; an existing file only with force, never the database read) and return a line saying so."""
    if out is not None:  # refused before the database is read: a typo costs nothing
        _check_output(Path(out), url, force)
    _check_dates(filters)
    df = query(url, **filters)
    ranked = rank(df, by=by, metric=metric, group_seeds=group_seeds)
    ranked.attrs["n_rows"] = len(ranked)
    if top is not None:
        ranked = ranked.head(top)
    if out is None and fmt is not None:
        with tempfile.TemporaryDirectory() as tmp:
            plots = plot_all(df, tmp, metric=ranked.attrs["metric"]) if fmt == "html" and not df.empty else []
            return export_text(ranked, fmt, plots=plots)
    if out is None:
        if df.empty:
            return f"no entries in {resolve_url(url)}" + (f" matching {filters}" if filters else "")
        from rich.console import Console
        color = sys.stdout.isatty() if color is None else color
        width = width or shutil.get_terminal_size((120, 40)).columns
        console = Console(file=io.StringIO(), force_terminal=color, no_color=not color, width=width)
        console.print(render_table(ranked, width=width))
        return console.file.getvalue()
    fmt = fmt or FORMATS.get(Path(out).suffix.lower())
    with tempfile.TemporaryDirectory() as tmp:
        plots = plot_all(df, tmp, metric=ranked.attrs["metric"]) if fmt == "html" and not df.empty else []
        path = export(ranked, fmt, out, plots=plots, force=force, protect=[sqlite_path(resolve_url(url))])
    return f"wrote {path}: {len(ranked)} rows from {len(df)} entries" + (f", {len(plots)} plots" if plots else "")


def _check_dates(filters: dict) -> None:
    from kit.errors import RecipeError
    from ._store import _utc
    for key in ("since", "until"):
        if filters.get(key) is not None:
            try:
                _utc(filters[key])
            except (TypeError, ValueError):
                raise RecipeError(f"--{key} {filters[key]!r} is not an ISO date or time; write e.g. 2026-11-01 or "
                                  f"2026-11-01T18:30") from None


def _check_output(out: Path, url, force: bool) -> None:
    """What export will refuse (kit.rundir.check_new_file), refused before any work: a folder, a missing parent
    folder, an existing file without force, and the leaderboard's own database even with it."""
    from kit.rundir import check_new_file
    check_new_file(out, force=force, protect=[sqlite_path(resolve_url(url))])


def score_submission(submission_csv, solution_csv, metric: str, id_column: str | None = None) -> dict:
    """Score a submission against a Kaggle-style solution: id, label and Usage ("Public", "Private" or "Ignored";
    no Usage column: all public). The submission holds id + the predicted label, or id + one probability column
    per class (labels are the argmax; log_loss uses the row-normalised probabilities).
    Returns {"metric", "public", "private", "n_public", "n_private"}; a score is None when its part is empty."""
    try:
        get_metric(metric)
    except ValueError as e:  # an unknown name: the message lists the valid ones
        raise SubmissionError(str(e)) from None
    sub_path, sol_path = Path(submission_csv), Path(solution_csv)
    solution, submission = _read(sol_path), _read(sub_path)
    id_column = id_column or solution.columns[0]
    for path, frame in ((sol_path, solution), (sub_path, submission)):
        if id_column not in frame:
            raise SubmissionError(f"{path}: no id column {id_column!r}; its columns are {list(frame.columns)}")
        duplicated = frame[id_column][frame[id_column].duplicated()].unique()
        if len(duplicated):
            raise SubmissionError(f"{path}: {len(duplicated)} ids appear more than once, e.g. {list(duplicated[:3])}")
    usage_column = next((c for c in solution.columns if c.lower() == "usage"), None)
    usage = (solution[usage_column].str.strip().str.lower() if usage_column
             else pd.Series("public", index=solution.index))
    bad = sorted(set(usage) - set(_USAGES))
    if bad:
        raise SubmissionError(f"{sol_path}: column {usage_column!r} holds {bad}; expected Public, Private or Ignored")
    label_columns = [c for c in solution.columns if c not in (id_column, usage_column)]
    if len(label_columns) != 1:
        raise SubmissionError(f"{sol_path}: expected one label column besides {id_column!r}"
                         f"{' and ' + repr(usage_column) if usage_column else ''}; found {label_columns}")
    _check_same_ids(solution[id_column], submission[id_column], sol_path, sub_path)
    submission = submission.set_index(id_column).loc[solution[id_column]]
    truth = solution[label_columns[0]]
    tags = metric in TAG_METRICS and submission.shape[1] == 1 and (  # f1_micro also scores one class a row
        metric == "f2_samples" or truth.astype(str).str.contains(" ").any())
    if metric in VALUE_METRICS or tags or (
            metric in ("roc_auc", "log_loss") and submission.shape[1] == 1 and _numeric(truth)
            and _numeric(submission.iloc[:, 0])):
        y, probs = _value_targets(metric, submission, solution[label_columns[0]], sub_path)
    else:
        classes, probs = _submission_probs(submission, solution[label_columns[0]], sub_path, sol_path)
        y = np.array([classes.index(label) for label in solution[label_columns[0]]])
    result = {"metric": metric}
    for part in ("public", "private"):
        mask = (usage == part).to_numpy()
        result[part] = metric_score(metric, y[mask], probs[mask]) if mask.any() else None
        result[f"n_{part}"] = int(mask.sum())
    return result


def record_score(result: dict, *, name: str, url=None, **fields) -> int:
    """Record a score_submission() result as a kind="submission" entry; returns its id. `fields` fill in the
    rest of the Entry (recipe_name, backbone, score= the validation score if known, run_dir, device, extra...)."""
    return record([score_entry(result, name=name, **fields)], url)[0]


def score_entry(result: dict, *, name: str, **fields) -> Entry:
    """The kind="submission" Entry of a score_submission() result (record_score records it)."""
    extra = {"n_public": result["n_public"], "n_private": result["n_private"], **fields.pop("extra", {})}
    return Entry(**{**environment(), "score": None, **fields}, kind="submission", name=name, metric=result["metric"],
                 public_score=result["public"], private_score=result["private"], extra=extra)


def _read(path: Path) -> pd.DataFrame:
    from kit.readers import read_csv
    if not path.is_file():
        raise SubmissionError(f"no such file: {path}")
    frame = read_csv(path, fix="give a UTF-8 CSV with the id column first")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def _check_same_ids(solution_ids, submission_ids, sol_path, sub_path):
    missing = solution_ids[~solution_ids.isin(set(submission_ids))]
    extra = submission_ids[~submission_ids.isin(set(solution_ids))]
    if len(missing):
        raise SubmissionError(f"{sub_path}: {len(missing)} of the {len(solution_ids)} ids in {sol_path} have no "
                         f"prediction, e.g. {list(missing[:3])}")
    if len(extra):
        raise SubmissionError(f"{sub_path}: {len(extra)} ids are not in {sol_path}, e.g. {list(extra[:3])}")


VALUE_METRICS = ("rmse", "mae", "qwk")  # one numeric column: grades or values
TAG_METRICS = ("f2_samples", "f1_micro")  # one column of space-separated tags a row


def _numeric(values) -> bool:
    return bool(pd.to_numeric(pd.Series(values), errors="coerce").notna().all())


def _value_targets(metric: str, submission, truth, sub_path) -> tuple[np.ndarray, np.ndarray]:
    """(y, scores (n, K)) of a one-column submission of values, grades, P(1) or tags (kit.task's shapes)."""
    if submission.shape[1] != 1:
        raise SubmissionError(f"{sub_path}: {metric} scores one prediction column besides the id, it has "
                              f"{list(submission.columns)}")
    pred = submission.iloc[:, 0]
    if metric in TAG_METRICS:  # tags: one 0/1 column per tag either side has
        t = [set(str(v).split()) for v in truth]
        p = [set(str(v).split()) if isinstance(v, str) else set() for v in pred]
        vocab = sorted(set().union(*t, *p))
        return (np.array([[int(w in r) for w in vocab] for r in t]),
                np.array([[float(w in r) for w in vocab] for r in p]))
    values = pd.to_numeric(pred, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise SubmissionError(f"{sub_path}: {int((~np.isfinite(values)).sum())} predictions are not numbers, e.g. "
                              f"{pred[~np.isfinite(values)].iloc[0]!r}")
    y = pd.to_numeric(truth).to_numpy()
    return (y.astype(np.int64) if np.all(y == np.round(y)) else y.astype(np.float64)), values[:, None]


def _submission_probs(submission, labels, sub_path, sol_path) -> tuple[list[str], np.ndarray]:
    """(class names, probabilities (n, C)) in solution order; a label submission becomes one-hot rows."""
    if submission.shape[1] == 0:
        raise SubmissionError(f"{sub_path}: no prediction column besides the id")
    if submission.shape[1] == 1:
        predicted = submission.iloc[:, 0].to_numpy()
        classes = sorted(set(labels) | set(predicted))
        probs = (predicted[:, None] == np.array(classes)[None, :]).astype(np.float64)
        return classes, probs
    classes = list(submission.columns)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise SubmissionError(f"{sol_path}: labels {unknown[:5]} have no probability column in {sub_path}, whose "
                         f"columns are {classes}")
    probs = submission.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs) | (probs < 0)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SubmissionError(f"{sub_path}: {int(bad.sum())} probabilities are not finite non-negative numbers, e.g. "
                         f"{submission.iloc[row, col]!r} for id {submission.index[row]!r}, class {classes[col]!r}")
    sums = probs.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise SubmissionError(f"{sub_path}: {int((sums <= 0).sum())} rows have probabilities summing to 0")
    return classes, probs / sums  # Kaggle's log loss also rescales each row to sum to 1
