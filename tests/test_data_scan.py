import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import kit.data.scan as scan
from kit.data import load_sources
from kit.data.scan import BadImage, apply_bad_images, scan_sources
from kit.errors import DataError
from kit.recipe import DataSpec


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch):
    """Paths check_image was called on (the files actually decoded)."""
    seen = []
    real = scan.check_image

    def spy(path):
        seen.append(str(path))
        return real(path)
    monkeypatch.setattr(scan, "check_image", spy)
    return seen


def _bomb(path, side=30000):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4000))
                     + chunk(b"IEND", b""))


def _break(kaggle_root):
    """Four bad files in one dataset: three labelled (rows 2, 7, 11), one test (row 4)."""
    train, test = kaggle_root / "train", kaggle_root / "test"
    data = (train / "img_002.jpg").read_bytes()
    (train / "img_002.jpg").write_bytes(data[: len(data) // 2])  # truncated: the header is intact
    (train / "img_007.jpg").write_bytes(b"")
    _bomb(train / "img_011.jpg")  # a PNG named .jpg, 30000x30000
    (test / "t_004.jpg").write_bytes(b"GIF89a garbage")


def test_every_bad_image_is_found_in_one_scan(kaggle_spec, kaggle_root, decodes):
    _break(kaggle_root)
    bad = scan_sources(load_sources(kaggle_spec), workers=2)
    assert [(b.split, b.row, b.id) for b in bad] == [("train", 2, "img_002"), ("train", 7, "img_007"),
                                                      ("train", 11, "img_011"), ("test", 4, "t_004")]
    reasons = {b.id: b.reason for b in bad}
    assert "truncated" in reasons["img_002"]
    assert "cannot identify" in reasons["img_007"] and "cannot identify" in reasons["t_004"]
    assert "30000x30000" in reasons["img_011"] or "DecompressionBomb" in reasons["img_011"]
    assert bad[0].path == str(kaggle_root / "train" / "img_002.jpg")
    assert len(decodes) == 36  # every labelled and test image, each once


def test_many_formats_pass_the_scan(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "ds" / "train"
    a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    (folder / "rgb").mkdir(parents=True)
    (folder / "odd").mkdir()
    Image.fromarray(a).save(folder / "rgb" / "x.PNG")
    Image.fromarray(a).save(folder / "rgb" / "x.JPG", quality=90)
    Image.fromarray(a).save(folder / "rgb" / "x.gif")
    Image.fromarray(a).save(folder / "rgb" / "x.tiff")
    Image.fromarray(a).save(folder / "rgb" / "x.webp")
    Image.fromarray(np.zeros((30, 40, 4), np.uint8), "CMYK").save(folder / "odd" / "cmyk.jpg")
    Image.fromarray(np.full((30, 40), 30000, np.uint16)).save(folder / "odd" / "x16.png")
    Image.fromarray(np.zeros((30, 40, 4), np.uint8), "RGBA").save(folder / "odd" / "rgba.png")
    p = Image.fromarray(np.zeros((30, 40), np.uint8), "P")
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.save(folder / "odd" / "pal.png", transparency=0)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(folder / "odd" / "rot.jpg", exif=exif)
    Image.fromarray(a[:1, :1]).save(folder / "odd" / "one.png")
    Image.fromarray(rng.integers(0, 256, (40, 6000, 3), dtype=np.uint8)).save(folder / "odd" / "wide.png")
    s = load_sources(DataSpec(source="imagefolder", root=str(tmp_path / "ds")))
    assert len(s.train) == 12
    assert scan_sources(s) == []


def test_second_scan_decodes_nothing_and_a_changed_file_again(kaggle_spec, kaggle_root, cache_dir, decodes):
    sources = load_sources(kaggle_spec)
    assert scan_sources(sources) == []
    assert len(decodes) == 36
    files = list((cache_dir / "scan").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # one file per dataset, no temporary files left
    cached = json.loads(files[0].read_text())["images"]
    assert cached[str(kaggle_root / "train" / "img_000.jpg")][2] is None
    decodes.clear()
    assert scan_sources(sources) == []
    assert decodes == []  # (path, size, mtime_ns) unchanged: nothing decoded
    path = kaggle_root / "train" / "img_005.jpg"
    path.write_bytes(path.read_bytes()[:300])  # changed under the cache
    bad = scan_sources(sources)
    assert decodes == [str(path)] and [b.id for b in bad] == ["img_005"]
    decodes.clear()
    assert [b.id for b in scan_sources(sources)] == ["img_005"] and decodes == []  # bad verdicts are cached too


def test_a_vanished_file_is_bad_and_not_cached(kaggle_spec, kaggle_root):
    sources = load_sources(kaggle_spec)
    (kaggle_root / "test" / "t_001.jpg").unlink()
    bad = scan_sources(sources)
    assert [(b.split, b.id) for b in bad] == [("test", "t_001")] and "FileNotFoundError" in bad[0].reason


def test_progress_callback_and_in_memory_images(kaggle_spec, cache_dir):
    calls = []
    scan_sources(load_sources(kaggle_spec), workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (36, 36) and all(t == 36 for _, t in calls) and len(calls) == 2  # chunks of 32
    assert scan_sources(load_sources(DataSpec(limit=20))) == []  # digits: arrays, nothing to scan or cache
    assert len(list((cache_dir / "scan").iterdir())) == 1


# ---------------------------------------------------------------- data.bad_images: fail | skip

def test_fail_lists_every_bad_image_and_how_to_proceed(kaggle_spec, kaggle_root):
    _break(kaggle_root)
    (kaggle_root / "sample_submission.csv").unlink()  # test images may then be skipped too
    sources = load_sources(kaggle_spec)
    bad = scan_sources(sources)
    with pytest.raises(DataError) as e:
        apply_bad_images(sources, bad, "fail", where="recipes/leaves.yaml")
    msg = str(e.value)
    assert msg.startswith("3 labelled images and 1 test image cannot be decoded (data.bad_images: fail in "
                          "recipes/leaves.yaml)")
    for b in bad:
        assert f"{b.split} row {b.row} (id {b.id!r}, {b.path}): {b.reason}" in msg
    assert "set data.bad_images: skip in recipes/leaves.yaml" in msg and "\n" not in msg


def test_skip_drops_the_rows_and_labels_stay_with_their_images(kaggle_spec, kaggle_root):
    _break(kaggle_root)
    (kaggle_root / "sample_submission.csv").unlink()
    sources = load_sources(kaggle_spec)
    label_of = {i: (item, int(y)) for i, item, y in zip(sources.train.ids, sources.train.items, sources.train.labels)}
    bad = scan_sources(sources)
    kept = apply_bad_images(sources, bad, "skip")
    assert len(kept.train) == 27 and not {"img_002", "img_007", "img_011"} & set(kept.train.ids)
    assert kept.train.classes == sources.train.classes
    for i, item, y in zip(kept.train.ids, kept.train.items, kept.train.labels):
        assert label_of[i] == (item, int(y))  # every image keeps its own label
    assert list(kept.test.ids) == [f"t_{i:03d}" for i in range(6) if i != 4]
    assert scan_sources(kept) == []
    assert apply_bad_images(sources, [], "fail") is sources


def test_skip_cannot_drop_test_images_a_sample_submission_needs(kaggle_spec, kaggle_root):
    _break(kaggle_root)
    sources = load_sources(kaggle_spec)
    with pytest.raises(DataError, match=r"1 test image cannot be decoded.*t_004.*prediction for every id of "
                                        r".*sample_submission\.csv.*replace the test files"):
        apply_bad_images(sources, scan_sources(sources), "skip")


def test_skip_with_every_labelled_image_bad():
    from kit.data import ImageTable, Sources
    table = ImageTable(np.array(["a", "b"]), ["/x/a.png", "/x/b.png"], np.array([0, 1]), ("p", "q"))
    bad = [BadImage("train", r, i, p, "OSError: nope") for r, (i, p) in enumerate(zip(table.ids, table.items))]
    with pytest.raises(DataError, match="none of the 2 labelled images can be decoded"):
        apply_bad_images(Sources(table), bad, "skip")


def test_scan_cache_from_another_version_is_ignored(kaggle_spec, cache_dir, decodes, monkeypatch):
    sources = load_sources(kaggle_spec)
    scan_sources(sources)
    decodes.clear()
    monkeypatch.setattr(scan, "SCAN_VERSION", scan.SCAN_VERSION + 1)
    scan_sources(sources)
    assert len(decodes) == 36
    (next((cache_dir / "scan").iterdir())).write_text("{not json")
    decodes.clear()
    assert scan_sources(sources) == [] and len(decodes) == 36
