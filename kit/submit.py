"""A Kaggle submission checked against sample_submission.csv before it is written, so the first upload counts.

numpy/pandas only (no torch). The sample is read with every column as text: ids such as '007' stay
'007' (not 7), and ids are always compared as strings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.predictions import Predictions
from kit.task import Task, check_label_values, label_values, multiclass, proba_values, value_columns_needed

FORMATS = ("label", "proba")  # and "auto" (resolve_format): proba where the sample holds probabilities


from kit.errors import SubmissionError, RunDirError  # noqa: E402  (re-exported: kit.submit.SubmissionError)


def read_sample(path) -> pd.DataFrame:
    # keep_default_na=False: an id or class literally named 'NA' or 'None' must stay a string, not become NaN
    from kit.readers import read_csv
    return read_csv(path, fix="give the competition's sample submission (UTF-8 CSV, the id column first)")


def _where(sample_path) -> str:
    return f" (sample: {sample_path})" if sample_path is not None else ""


def _few(values, k: int = 5) -> str:
    values = list(values)
    more = f" and {len(values) - k} more" if len(values) > k else ""
    return f"{values[:k]}{more}"


def resolve_format(fmt: str, sample_df: pd.DataFrame | None) -> str:
    """submit.format: auto -> proba when the sample's value cells hold probabilities (numbers that are not all
    integers, e.g. 0.5 or 1/120), else label; label and proba stay."""
    if fmt != "auto":
        return fmt
    if sample_df is None or sample_df.shape[1] < 2:
        return "label"
    try:
        values = sample_df.iloc[:, 1:].astype(float).to_numpy()
    except (TypeError, ValueError):
        return "label"
    return "proba" if np.isfinite(values).all() and np.any(values != np.round(values)) else "label"


def _columns(sample_df: pd.DataFrame, fmt: str, id_column, label_column, sample_path, task: Task | None = None):
    """(id column, value columns) of the sample: one value column, or one per class or label (proba format, or a
    task read from one 0/1 column each)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown submission format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    cols = [str(c) for c in sample_df.columns]
    id_column = cols[0] if id_column is None else id_column
    if id_column not in cols:
        raise SubmissionError(f"id column {id_column!r} is not a column of the sample; its columns are {cols}; "
                              f"pass id_column= one of them{_where(sample_path)}")
    rest = [c for c in cols if c != id_column]
    if fmt == "proba" and task is None or task is not None and value_columns_needed(task, fmt) is not None:
        return id_column, rest
    if label_column is None:
        if len(rest) != 1:
            raise SubmissionError(f"label format needs one label column besides {id_column!r}, the sample has {rest}; "
                                  f"pass label_column=, or fmt='proba' for one column per class{_where(sample_path)}")
        label_column = rest[0]
    if label_column not in rest:
        raise SubmissionError(f"label column {label_column!r} is not a column of the sample; its columns are {cols}"
                              f"{_where(sample_path)}")
    return id_column, [label_column]


def _check_class_columns(class_columns, classes, sample_path) -> None:
    not_predicted = [c for c in class_columns if c not in classes]
    not_in_sample = [c for c in classes if c not in class_columns]
    if not_predicted or not_in_sample:
        raise SubmissionError(
            "proba columns of the sample must be exactly the prediction's class names (compared as exact strings: "
            f"case, spaces and punctuation count): sample columns with no predicted class: {not_predicted}; "
            f"predicted classes with no sample column: {not_in_sample}. Fix the class names of the training data "
            f"(folder or label names) to match the sample{_where(sample_path)}")


def check_submission(df: pd.DataFrame, sample_df: pd.DataFrame, classes, fmt: str = "label", *,
                     id_column=None, label_column=None, sample_path=None, task: Task | None = None) -> None:
    """Raise SubmissionError on the first rule the submission breaks; each rule has its own message. `task`
    (kit.task; default: one class per image among `classes`) says what a value may be.

    Id checks run before the row count so the message names the offending ids; the row count check is
    left for samples that repeat an id.
    """
    task = task or multiclass(classes)
    classes = [str(c) for c in task.outputs]
    id_column, value_columns = _columns(sample_df, fmt, id_column, label_column, sample_path, task)
    where = _where(sample_path)
    expected = [str(c) for c in sample_df.columns]
    cols = [str(c) for c in df.columns]
    missing_cols = [c for c in expected if c not in cols]
    if missing_cols:
        raise SubmissionError(f"submission lacks columns {missing_cols}; it must have the sample's columns {expected}; "
                              f"add them{where}")
    extra_cols = [c for c in cols if c not in expected]
    if extra_cols:
        raise SubmissionError(f"submission has extra columns {extra_cols} that the sample lacks; "
                              f"keep only {expected}{where}")
    if value_columns_needed(task, fmt) is not None:
        _check_class_columns(value_columns, classes, sample_path)

    ids = df[id_column].astype(str)
    sample_ids = sample_df[id_column].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise SubmissionError(f"duplicate ids: each id must appear once, {len(dup)} ids repeat, e.g. {_few(dup)}; "
                              f"write one row per id of the sample{where}")
    known = set(sample_ids)
    unknown = [i for i in ids if i not in known]
    missing = [i for i in sample_ids.unique() if i not in set(ids)]
    if unknown:
        hint = (f"; {len(missing)} sample ids are missing, e.g. {_few(missing, 3)}: compare their spelling "
                "(leading zeros, file extensions, case)") if missing else ""
        raise SubmissionError(f"unknown ids: {len(unknown)} submission ids are not in the sample, e.g. "
                              f"{_few(unknown)}{hint}; use the sample's ids exactly, as strings{where}")
    if missing:
        raise SubmissionError(f"ids missing: {len(missing)} ids of the sample have no row (submission has {len(df)} "
                              f"rows, sample {len(sample_df)}), e.g. {_few(missing)}; predict every test image"
                              f"{where}")
    if len(df) != len(sample_df):
        raise SubmissionError(f"wrong row count: the submission has {len(df)} rows, the sample {len(sample_df)}; "
                              f"write one row per row of the sample, in its order{where}")

    tags = task.tags and fmt == "label"  # a row may have no tags: ""
    for c in expected:
        n_nan = 0 if tags and c in value_columns else int(df[c].isna().sum())
        if n_nan:
            raise SubmissionError(f"NaN values: column {c!r} has {n_nan} empty/NaN rows of {len(df)}; every cell "
                                  f"needs a value (check for NaN probabilities or unmapped labels){where}")
    if fmt == "label" and len(value_columns) == 1 and value_columns_needed(task, fmt) is None:
        values = df[value_columns[0]].fillna("").astype(str)
        bad = pd.Series(check_label_values(task, values), dtype=object)
        if len(bad):
            what = task.label_kind
            raise SubmissionError(f"unknown labels: column {value_columns[0]!r} has {len(bad)} values that are not "
                                  f"{what}, e.g. {_few(bad.unique())}; known: {_few(classes, 10)}; write predicted "
                                  f"values exactly{where}")


def make_submission(pred: Predictions, sample_submission_path=None, fmt: str = "label", id_column=None,
                    label_column=None, task: Task | None = None) -> pd.DataFrame:
    """One row per id of the sample, in its order and with its columns, checked before it is returned: the one
    submission builder (kit submit, kit predict, bundles). `task` (kit.task; default: one class per image) says
    what the scores are and what a cell holds (kit.task.label_values, proba_values); a fitted decision rule is
    applied to `pred` before (kit.decision).

    label: the decided values (the argmax class name, 0/1, tags, a grade, a clipped value). proba: the scores
    (each class or label column filled from the prediction's column of the same name; P(1); the value). auto:
    resolve_format. Predictions for ids the sample lacks are ignored. Without a sample (kit predict on a folder):
    the prediction's ids in its order, under `id_column` and `label_column` (or one column per class or label).
    """
    task = task or multiclass(pred.classes)
    if sample_submission_path is None:
        fmt = "label" if fmt == "auto" else fmt
        if id_column is None or (label_column is None and value_columns_needed(task, fmt) is None):
            raise ValueError("without a sample submission, name the id column (and the label column for label "
                             "format)")
        values = [label_column] if value_columns_needed(task, fmt) is None else [str(c) for c in task.outputs]
        sample = pd.DataFrame({id_column: np.asarray(pred.ids, dtype=object), **{c: "" for c in values}})
    else:
        sample = read_sample(sample_submission_path)
        fmt = resolve_format(fmt, sample)
    id_column, value_columns = _columns(sample, fmt, id_column, label_column, sample_submission_path, task)
    sample_ids = sample[id_column].astype(str).to_numpy()
    have = set(pred.ids)
    lacking = [i for i in dict.fromkeys(sample_ids) if i not in have]
    if lacking:
        raise SubmissionError(
            f"the prediction lacks {len(lacking)} of the sample's {len(set(sample_ids))} ids, e.g. {_few(lacking)}; "
            f"predict on the full test set (ids compare as strings: check leading zeros and file extensions)"
            f"{_where(sample_submission_path)}")
    named = value_columns_needed(task, fmt)
    if named is not None:
        _check_class_columns(value_columns, list(named), sample_submission_path)
    ordered = pred.reorder(sample_ids)
    df = sample.copy()
    cells = label_values(task, ordered.probs) if fmt == "label" else proba_values(task, ordered.probs)
    if named is None:
        df[value_columns[0]] = cells[0]
    else:
        index = {c: j for j, c in enumerate(task.outputs)}
        for c in value_columns:
            df[c] = cells[index[c]]
    check_submission(df, sample, task.outputs, fmt, id_column=id_column, label_column=value_columns[0]
                     if named is None else None, sample_path=sample_submission_path, task=task)
    return df


def write_submission(df: pd.DataFrame, path, overwrite: bool = False) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename): a reader sees the old file or the new one."""
    from kit.rundir import write_new_file
    return write_new_file(path, df.to_csv(index=False), force=overwrite, option="submission file")
