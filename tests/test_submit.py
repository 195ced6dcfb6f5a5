import os

import numpy as np
import pandas as pd
import pytest

from kit.errors import RunDirError

from kit.predictions import Predictions
from kit.submit import SubmissionError, check_submission, make_submission, read_sample, write_submission

CLASSES = ("cat", "dog", "NA")  # 'NA' must stay a class name, not become NaN
IDS = ["007", "010", "003", "1", "042"]  # leading zeros must survive; sample order is not sorted


@pytest.fixture
def pred():
    # prediction ids in a different order from the sample, plus one the sample lacks
    ids = ["1", "042", "003", "007", "010", "999"]
    probs = np.array([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.6, .3, .1], [.3, .4, .3], [1, 0, 0]])
    return Predictions(ids, probs, CLASSES)


@pytest.fixture
def label_sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": IDS, "label": ["cat"] * len(IDS)}).to_csv(path, index=False)
    return path


@pytest.fixture
def proba_sample(tmp_path):
    path = tmp_path / "sample_proba.csv"
    # class columns in a different order from the prediction's classes
    pd.DataFrame({"id": IDS, "dog": 0.5, "NA": 0.0, "cat": 0.5}).to_csv(path, index=False)
    return path


def test_label_submission_round_trips_in_sample_order(pred, label_sample, tmp_path):
    df = make_submission(pred, label_sample, "label")
    assert list(df.columns) == ["id", "label"]
    assert df["id"].tolist() == IDS
    assert df["label"].tolist() == ["cat", "dog", "NA", "cat", "dog"]
    out = write_submission(df, tmp_path / "sub.csv")
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert back["id"].tolist() == IDS
    assert back["label"].tolist() == df["label"].tolist()


def test_proba_submission_maps_classes_by_name(pred, proba_sample, tmp_path):
    df = make_submission(pred, proba_sample, "proba")
    assert list(df.columns) == ["id", "dog", "NA", "cat"]
    assert df["id"].tolist() == IDS
    np.testing.assert_allclose(df["cat"], [.6, .3, .2, .7, .1], atol=1e-6)
    np.testing.assert_allclose(df["NA"], [.1, .3, .6, .1, .1], atol=1e-6)
    back = pd.read_csv(write_submission(df, tmp_path / "sub.csv"), dtype={"id": str})
    assert back["id"].tolist() == IDS
    np.testing.assert_allclose(back[["dog", "NA", "cat"]].to_numpy(), df[["dog", "NA", "cat"]].to_numpy())


def _good(pred, label_sample):
    return make_submission(pred, label_sample), read_sample(label_sample)


@pytest.mark.parametrize("case, expected", [
    ("drop_row", r"ids missing: 1 ids of the sample have no row \(submission has 4 rows, sample 5\)"),
    ("duplicate", r"duplicate ids: each id must appear once.*'007'"),
    ("unknown", r"unknown ids: 1 submission ids are not in the sample, e.g. \['7'\].*leading zeros"),
    ("missing_col", r"submission lacks columns \['label'\]"),
    ("extra_col", r"extra columns \['score'\]"),
    ("nan", r"NaN values: column 'label' has 2 empty/NaN rows of 5"),
    ("bad_label", r"unknown labels: column 'label' has 1 values that are not class names, e.g. \['Cat'\]"),
])
def test_each_failure_has_its_own_message(pred, label_sample, case, expected):
    df, sample = _good(pred, label_sample)
    if case == "drop_row":
        df = df.iloc[1:]
    elif case == "duplicate":
        df.loc[1, "id"] = "007"
    elif case == "unknown":
        df.loc[0, "id"] = "7"
    elif case == "missing_col":
        df = df[["id"]]
    elif case == "extra_col":
        df["score"] = 1.0
    elif case == "nan":
        df.loc[[0, 3], "label"] = np.nan
    elif case == "bad_label":
        df.loc[2, "label"] = "Cat"
    with pytest.raises(SubmissionError, match=expected) as err:
        check_submission(df, sample, CLASSES, "label", sample_path=label_sample)
    assert str(label_sample) in str(err.value)


def test_wrong_row_count_when_the_sample_repeats_an_id(pred):
    sample = pd.DataFrame({"id": ["007", "007", "010"], "label": "cat"})
    df = pd.DataFrame({"id": ["007", "010"], "label": ["cat", "dog"]})
    with pytest.raises(SubmissionError, match="wrong row count: the submission has 2 rows, the sample 3"):
        check_submission(df, sample, CLASSES, "label")


def test_proba_class_names_must_match_exactly(pred, tmp_path):
    path = tmp_path / "sample.csv"
    pd.DataFrame({"id": IDS, "Cat": 0.3, "dog": 0.3, "NA": 0.4}).to_csv(path, index=False)
    with pytest.raises(SubmissionError, match=r"no predicted class: \['Cat'\].*no sample column: \['cat'\]"):
        make_submission(pred, path, "proba")


def test_prediction_lacking_sample_ids(pred, tmp_path):
    path = tmp_path / "sample.csv"
    pd.DataFrame({"id": IDS + ["0077"], "label": "cat"}).to_csv(path, index=False)
    with pytest.raises(SubmissionError, match=r"the prediction lacks 1 of the sample's 6 ids, e.g. \['0077'\]"):
        make_submission(pred, path)


def test_label_format_needs_one_label_column(pred, proba_sample):
    with pytest.raises(SubmissionError, match="pass label_column="):
        make_submission(pred, proba_sample, "label")
    df = make_submission(pred, proba_sample, "label", label_column="dog")
    assert df["dog"].tolist() == ["cat", "dog", "NA", "cat", "dog"]


def test_existing_file_is_not_overwritten(pred, label_sample, tmp_path):
    df = make_submission(pred, label_sample)
    path = tmp_path / "submission.csv"
    path.write_text("precious\n")
    with pytest.raises(RunDirError, match="--force"):
        write_submission(df, path)
    assert path.read_text() == "precious\n"
    write_submission(df, path, overwrite=True)
    assert pd.read_csv(path, dtype=str)["id"].tolist() == IDS


def test_atomic_write_leaves_no_temp_files(pred, label_sample, tmp_path):
    out = tmp_path / "subs"
    out.mkdir()  # kit's writer makes no folders: a missing parent is a typo (kit.rundir.write_new_file)
    write_submission(make_submission(pred, label_sample), out / "submission.csv")
    assert os.listdir(out) == ["submission.csv"]

    class Boom(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_submission(Boom({"id": ["1"]}), out / "other.csv")
    assert os.listdir(out) == ["submission.csv"]
