import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit.data import DataSourceError, ImageTable, load_sources, sort_classes
from kit.errors import DataError
from kit.recipe import DataSpec


# ---------------------------------------------------------------- digits

def test_digits_tables_and_solution():
    s = load_sources(DataSpec(source="digits", digits_size=24))
    assert s.train.classes == tuple(str(c) for c in range(10))
    assert len(s.train) + len(s.test) == 1797
    assert len(s.test) == pytest.approx(0.2 * 1797, abs=1)
    assert not set(s.train.ids) & set(s.test.ids)
    assert s.train.ids[0].startswith("d") and len(s.train.ids[0]) == 5
    img = s.train.items[0]
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8 and img.max() > 200
    assert s.train.labels.dtype == np.int64 and set(s.train.labels) == set(range(10))
    assert s.test.labels is None
    # stratified: each digit has ~20% of its ~180 images in the test set
    counts = np.bincount([int(c) for c in s.test_solution["label"]], minlength=10)
    assert counts.min() >= 30
    assert list(s.sample_submission.columns) == ["id", "label"]
    assert (s.sample_submission["id"].to_numpy() == s.test.ids).all()
    assert (s.sample_submission["label"] == "0").all()
    sol = s.test_solution
    assert list(sol.columns) == ["id", "label", "Usage"] and (sol["id"].to_numpy() == s.test.ids).all()
    assert (sol["Usage"] == "Public").mean() == pytest.approx(0.3, abs=0.01)
    assert set(sol["Usage"]) == {"Public", "Private"}


def test_digits_split_ignores_data_seed_and_limit_keeps_first():
    a = load_sources(DataSpec(seed=0))
    b = load_sources(DataSpec(seed=5, limit=50))
    assert (a.test.ids == b.test.ids).all()
    assert len(b.train) == 50 and (b.train.ids == a.train.ids[:50]).all()
    assert len(b.test) == len(a.test)


def test_table_subset():
    t = ImageTable(np.array(["a", "b", "c"]), ["pa", "pb", "pc"], np.array([0, 1, 0]), ("x", "y"))
    s = t.subset([2, 0])
    assert list(s.ids) == ["c", "a"] and s.items == ["pc", "pa"] and list(s.labels) == [0, 0] and len(s) == 2


def test_sort_classes_numeric():
    assert sort_classes(["10", "2", "1", "2"]) == ("1", "2", "10")
    assert sort_classes(["b", "a", "10", "2"]) == ("10", "2", "a", "b")


# ---------------------------------------------------------------- imagefolder

def test_imagefolder(imagefolder_spec, imagefolder_root):
    s = load_sources(imagefolder_spec)
    assert s.train.classes == ("class_a", "class_b", "class_c")
    assert len(s.train) == 30 and np.bincount(s.train.labels).tolist() == [10, 10, 10]
    assert s.train.ids[0] == "class_a/img_00.png"
    for i, label in zip(s.train.ids, s.train.labels):
        assert i.split("/")[0] == s.train.classes[label]
    assert s.train.items[0] == str(imagefolder_root / "train" / "class_a" / "img_00.png")
    assert len(s.test) == 6 and s.test.ids[0] == "test_00" and s.test.labels is None
    assert s.sample_submission is None and s.test_solution is None


def test_imagefolder_flat_layout_skips_test_dir_and_reads_sample_submission(tmp_path):
    for name in ("10", "2"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (5, 4)).save(tmp_path / name / "x.JPG")
    (tmp_path / "test").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "test" / "q.png")
    pd.DataFrame({"id": ["q"], "label": ["2"]}).to_csv(tmp_path / "sample_submission.csv", index=False)
    s = load_sources(DataSpec(source="imagefolder", root=str(tmp_path)))
    assert s.train.classes == ("2", "10") and list(s.train.ids) == ["2/x.JPG", "10/x.JPG"]
    assert list(s.test.ids) == ["q"]
    assert s.sample_submission["label"].tolist() == ["2"]
    assert s.sample_submission_path.endswith("sample_submission.csv")


def test_imagefolder_empty_class_folder_is_named(imagefolder_root):
    (imagefolder_root / "train" / "class_d").mkdir()
    (imagefolder_root / "train" / "class_d" / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match="class_d.*no images"):
        load_sources(DataSpec(source="imagefolder", root=str(imagefolder_root)))


def test_imagefolder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataSourceError, match="no class folders in .*train"):
        load_sources(DataSpec(source="imagefolder", root=str(tmp_path)))


# ---------------------------------------------------------------- kaggle

def test_kaggle(kaggle_spec, kaggle_root):
    s = load_sources(kaggle_spec)
    assert s.train.classes == ("cat", "dog", "fox")
    assert len(s.train) == 30 and s.train.ids[1] == "img_001" and s.train.labels[1] == 1
    assert s.train.items[0] == str(kaggle_root / "train" / "img_000.jpg")
    assert list(s.test.ids) == list(s.sample_submission["id"]) and len(s.test) == 6
    assert s.test.items[0] == str(kaggle_root / "test" / "t_000.jpg")
    assert s.sample_submission_path == str(kaggle_root / "sample_submission.csv")


def test_kaggle_column_names_path_column_and_image_dir(kaggle_root):
    df = pd.read_csv(kaggle_root / "train.csv")
    df = pd.DataFrame({"image_name": df["id"], "target": df["label"], "file": "sub/" + df["id"] + ".jpg"})
    df.to_csv(kaggle_root / "labels.csv", index=False)
    (kaggle_root / "train").rename(kaggle_root / "sub")
    (kaggle_root / "images").mkdir()
    (kaggle_root / "sub").rename(kaggle_root / "images" / "sub")
    spec = DataSpec(source="kaggle", root=str(kaggle_root), train_csv="labels.csv", id_column="image_name",
                    label_column="target", path_column="file", image_dir="images", image_suffix=".jpg")
    s = load_sources(spec)
    assert s.train.items[3] == str(kaggle_root / "images" / "sub" / "img_003.jpg")
    assert s.train.ids[3] == "img_003" and s.train.classes == ("cat", "dog", "fox")


def test_kaggle_missing_image_names_row_path_and_suffix(kaggle_root):
    with pytest.raises(DataSourceError) as e:
        load_sources(DataSpec(source="kaggle", root=str(kaggle_root)))  # image_suffix not set
    msg = str(e.value)
    assert "row 0 (line 2)" in msg and "img_000" in msg and "does not exist" in msg
    assert "image_suffix: '.jpg'" in msg and "data.image_dir" in msg


def test_kaggle_one_missing_image(kaggle_spec, kaggle_root):
    (kaggle_root / "train" / "img_007.jpg").unlink()
    with pytest.raises(DataSourceError, match=r"row 7 .*img_007\.jpg does not exist"):
        load_sources(kaggle_spec)


def test_kaggle_missing_column_lists_columns(kaggle_root):
    spec = DataSpec(source="kaggle", root=str(kaggle_root), label_column="target", image_suffix=".jpg")
    with pytest.raises(DataSourceError, match=r"no column 'target' \(data.label_column\).*\['id', 'label'\]"):
        load_sources(spec)


def test_kaggle_duplicate_ids(kaggle_spec, kaggle_root):
    df = pd.read_csv(kaggle_root / "train.csv")
    df.loc[5, "id"] = "img_002"
    df.to_csv(kaggle_root / "train.csv", index=False)
    with pytest.raises(DataSourceError, match="'img_002' appears more than once.*row 2.*row 5"):
        load_sources(kaggle_spec)


def test_kaggle_missing_label_names_row(kaggle_spec, kaggle_root):
    df = pd.read_csv(kaggle_root / "train.csv")
    df.loc[4, "label"] = None
    df.to_csv(kaggle_root / "train.csv", index=False)
    with pytest.raises(DataSourceError, match=r"'label' .* empty at row 4 \(line 6"):
        load_sources(kaggle_spec)


def test_kaggle_numeric_labels_sorted_numerically_and_limit(kaggle_root, kaggle_spec):
    df = pd.read_csv(kaggle_root / "train.csv")
    df["label"] = df["label"].map({"cat": 10, "dog": 2, "fox": 1})
    df.to_csv(kaggle_root / "train.csv", index=False)
    s = load_sources(kaggle_spec.model_copy(update={"limit": 7}))
    assert s.train.classes == ("1", "2", "10")
    assert len(s.train) == 7 and s.train.labels[0] == 2  # "10"


def test_kaggle_missing_test_images_are_named(kaggle_spec, kaggle_root):
    (kaggle_root / "test" / "t_004.jpg").unlink()
    with pytest.raises(DataSourceError, match=r"1 of the 6 test images .*t_004\.jpg"):
        load_sources(kaggle_spec)


def test_kaggle_test_from_folder_without_sample_submission(kaggle_spec, kaggle_root):
    (kaggle_root / "sample_submission.csv").unlink()
    s = load_sources(kaggle_spec)
    assert s.sample_submission is None and list(s.test.ids) == [f"t_{i:03d}" for i in range(6)]
    assert load_sources(kaggle_spec.model_copy(update={"test_dir": None})).test is None


# ---------------------------------------------------------------- paths stay inside their folder

def _outside_image(tmp_path):
    """A valid image beside the dataset root: readable, so only the path rule can keep it out."""
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "outside.png")
    return tmp_path / "outside.png"


def test_kaggle_path_column_leaving_image_dir_is_refused_with_every_row(kaggle_root, tmp_path):
    _outside_image(tmp_path)
    df = pd.read_csv(kaggle_root / "train.csv")
    df["file"] = df["id"] + ".jpg"
    df.loc[3, "file"] = "../../../etc/passwd"
    df.loc[5, "file"] = "/etc/hostname"
    df.loc[8, "file"] = "../../outside.png"  # root/train/../../outside.png: a real image, outside data.root
    df.to_csv(kaggle_root / "train.csv", index=False)
    spec = DataSpec(source="kaggle", root=str(kaggle_root), path_column="file")
    with pytest.raises(DataError) as e:
        load_sources(spec)
    msg = str(e.value)
    assert str(kaggle_root / "train.csv") in msg and "3 image paths in column 'file'" in msg
    # lines as a person counts them in the file: the header is line 1, data row 3 is line 5
    passwd = os.path.realpath(kaggle_root / "train" / "../../../etc/passwd")
    assert f"line 5: '../../../etc/passwd' -> {passwd}" in msg
    assert "line 7: '/etc/hostname' -> /etc/hostname" in msg
    assert f"line 10: '../../outside.png' -> {tmp_path.resolve() / 'outside.png'}" in msg
    assert "data.path_column" in msg and "Fix:" in msg and "\n" not in msg


def test_kaggle_id_plus_suffix_leaving_and_listing_is_capped(kaggle_root, tmp_path):
    _outside_image(tmp_path)
    df = pd.read_csv(kaggle_root / "train.csv")
    df.loc[0:7, "id"] = [f"../{'../' * (i % 2)}outside{'' if i == 0 else i}" for i in range(8)]
    df.to_csv(kaggle_root / "train.csv", index=False)
    with pytest.raises(DataError) as e:
        load_sources(DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".png"))
    msg = str(e.value)
    assert "8 image paths in column 'id'" in msg and "line 2: '../outside.png'" in msg
    assert "and 3 more" in msg and "line 9" not in msg  # 5 rows listed, the rest counted
    assert "data.image_suffix" in msg


def test_kaggle_symlinks_must_stay_inside(kaggle_root, tmp_path):
    outside = _outside_image(tmp_path)
    train = kaggle_root / "train"
    (train / "img_004.jpg").unlink()
    (train / "img_004.jpg").symlink_to(outside)  # a file inside image_dir that leads out of it
    with pytest.raises(DataError, match=r"line 6: 'img_004\.jpg' -> .*outside\.png"):
        load_sources(DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".jpg"))
    (train / "img_004.jpg").unlink()
    (train / "img_004.jpg").symlink_to(train / "img_005.jpg")  # a symlink within the folder is fine
    assert load_sources(DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".jpg")).train.ids[4] == "img_004"


def test_kaggle_image_dir_may_itself_be_a_symlink(kaggle_root, tmp_path):
    (kaggle_root / "train").rename(tmp_path / "elsewhere")
    (kaggle_root / "train").symlink_to(tmp_path / "elsewhere")  # root/train -> a bigger disk: its files are inside
    assert len(load_sources(DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".jpg")).train) == 30


def test_kaggle_test_ids_leaving_test_dir_are_refused(kaggle_root, tmp_path):
    _outside_image(tmp_path)
    sample = pd.read_csv(kaggle_root / "sample_submission.csv")
    sample.loc[2, "id"] = "../../outside"
    sample.to_csv(kaggle_root / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match=r"sample_submission\.csv: 1 image path in the first column leads outside "
                                        r".*test.*line 4: '\.\./\.\./outside\.jpg'"):
        load_sources(DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".jpg"))


def test_imagefolder_symlinks_leaving_the_root_are_refused(imagefolder_root, tmp_path):
    outside = _outside_image(tmp_path)
    spec = DataSpec(source="imagefolder", root=str(imagefolder_root))
    link = imagefolder_root / "train" / "class_b" / "img_99.png"
    link.symlink_to(outside)
    with pytest.raises(DataError, match=r"1 image file in .*train leads outside it through symlinks.*img_99\.png "
                                        r"-> .*outside\.png.*Fix:"):
        load_sources(spec)
    link.unlink()
    (tmp_path / "far").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "far" / "x.png")
    (imagefolder_root / "train" / "class_d").symlink_to(tmp_path / "far")  # a whole class folder elsewhere
    with pytest.raises(DataError, match=r"class_d/x\.png -> .*far/x\.png"):
        load_sources(spec)
    (imagefolder_root / "train" / "class_d").unlink()
    (imagefolder_root / "test" / "test_99.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"in .*test leads outside it.*test_99\.png"):
        load_sources(spec)


def test_kaggle_test_folder_without_sample_submission_checks_symlinks(kaggle_spec, kaggle_root, tmp_path):
    (kaggle_root / "sample_submission.csv").unlink()
    (kaggle_root / "test" / "t_009.jpg").symlink_to(_outside_image(tmp_path))
    with pytest.raises(DataError, match=r"t_009\.jpg -> .*outside\.png"):
        load_sources(kaggle_spec)
