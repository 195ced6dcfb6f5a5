import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from kit.data import (ImageDataset, ImageReadError, ImageTable, create_eval_transform, create_train_transform,
                      load_sources, make_loader, read_image)
from kit.data import cache as C
from kit.data.cache import attach_decoded_cache, decoded_max_side, open_entry
from kit.recipe import AugmentSpec, DataSpec, Recipe

CFG = {"input_size": 24, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0,
       "interpolation": "bilinear"}
AUGMENT = AugmentSpec(train=[{"RandomResizedCrop": {"scale": [0.3, 1.0]}}, {"HorizontalFlip": {"p": 0.5}}])


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "kitcache"))


def _entries(tmp_path):
    root = tmp_path / "kitcache" / "decoded"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def test_every_row_reads_what_its_file_decodes_to(imagefolder_spec, tmp_path):
    s = load_sources(imagefolder_spec)
    cached = attach_decoded_cache(s, progress=False)
    for table in (cached.train, cached.test):
        assert table.decoded is not None
        for row, path in enumerate(table.items):
            assert np.array_equal(table.image(row), read_image(path))
    (entry,) = _entries(tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == ["complete", "index.npy", "meta.json", "pixels.bin"]
    index = np.load(entry / "index.npy", allow_pickle=False)  # no pickle anywhere in an entry
    meta = json.loads((entry / "meta.json").read_text())
    assert index.shape == (36, 3) and meta["n"] == 36 and meta["bytes"] == 36 * 30 * 40 * 3
    assert os.path.getsize(entry / "pixels.bin") == meta["bytes"]
    assert cached.train.items == s.train.items  # items stay paths: the embedding cache digests them by stat


def test_a_second_attach_reads_the_entry_without_decoding(imagefolder_spec, tmp_path, monkeypatch):
    s = load_sources(imagefolder_spec)
    first = attach_decoded_cache(s, progress=False)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")
    monkeypatch.setattr(C, "read_image", no_decoding)
    again = attach_decoded_cache(s, progress=False)
    assert again.train.decoded.store.folder == first.train.decoded.store.folder
    assert np.array_equal(again.train.image(4), first.train.image(4))
    assert len(_entries(tmp_path)) == 1


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_a_changed_file_is_decoded_again(imagefolder_spec, imagefolder_root, tmp_path, change):
    s = load_sources(imagefolder_spec)
    path = imagefolder_root / "train" / "class_b" / "img_02.png"
    row = s.train.items.index(str(path))
    attach_decoded_cache(s, progress=False)
    st = os.stat(path)
    new = np.full((30, 40, 3), 7, np.uint8) if change == "mtime" else np.full((12, 16, 3), 9, np.uint8)
    Image.fromarray(new).save(path)
    if change == "mtime":
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = attach_decoded_cache(s, progress=False)
    assert np.array_equal(again.train.image(row), new)
    assert len(_entries(tmp_path)) == 2  # a new entry; the old one is never read for these files


def test_training_and_prediction_read_through_the_cache(imagefolder_spec, imagefolder_root):
    s = load_sources(imagefolder_spec)
    rows = np.arange(12)

    def batches(table, workers):
        ds = ImageDataset(table, rows, create_train_transform(AUGMENT, CFG))
        return [(x.clone(), r.clone()) for x, _, r in make_loader(ds, 4, shuffle=True, num_workers=workers, seed=1)]
    expected = batches(s.train, 0)
    cached = attach_decoded_cache(s, progress=False)
    for p in (imagefolder_root / "train").rglob("*.png"):
        p.write_bytes(b"gone")  # from here on only the cache can give the pixels
    for workers in (0, 2):
        got = batches(cached.train, workers)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))
    x, y, row = ImageDataset(cached.test, [2], create_eval_transform(CFG))[0]
    assert y == -1 and row == 2 and tuple(x.shape) == (3, 24, 24)
    with pytest.raises(ImageReadError):  # without the cache the loader decodes the (now broken) file
        ImageDataset(s.train, rows, create_eval_transform(CFG))[0]


def test_subsets_keep_reading_their_own_rows(imagefolder_spec):
    cached = attach_decoded_cache(load_sources(imagefolder_spec), progress=False)
    part = cached.train.subset([17, 3])
    assert np.array_equal(part.image(0), cached.train.image(17))
    assert np.array_equal(part.image(1), read_image(cached.train.items[3]))


def test_max_side_shrinks_the_shorter_side_keeping_the_aspect(imagefolder_spec, tmp_path):
    s = load_sources(imagefolder_spec)
    cached = attach_decoded_cache(s, max_side=15, progress=False)
    import cv2
    image = cached.train.image(5)
    assert image.shape == (15, 20, 3)
    assert np.array_equal(image, cv2.resize(read_image(s.train.items[5]), (20, 15), interpolation=cv2.INTER_AREA))
    assert attach_decoded_cache(s, max_side=64, progress=False).train.image(5).shape == (30, 40, 3)
    assert len(_entries(tmp_path)) == 2  # the cap is part of the key
    assert C.stored_shape(4000, 3000, 512) == (683, 512) and C.stored_shape(3000, 4000, 512) == (512, 683)


def test_in_memory_images_are_not_stored(imagefolder_spec, tmp_path):
    digits = load_sources(DataSpec(limit=10, digits_size=16))
    assert attach_decoded_cache(digits, progress=False) is digits and not _entries(tmp_path)
    files = load_sources(imagefolder_spec).train
    mixed = ImageTable(np.array(["a", "f"]), [digits.train.items[0], files.items[0]], np.zeros(2, np.int64), ("0",))
    from kit.data import Sources
    table = attach_decoded_cache(Sources(mixed), progress=False).train
    assert table.decoded.slots.tolist() == [-1, 0]
    assert table.image(0) is digits.train.items[0] and np.array_equal(table.image(1), read_image(files.items[0]))


def test_a_store_over_budget_is_skipped_with_a_warning(imagefolder_spec, tmp_path):
    s = load_sources(imagefolder_spec)
    with pytest.warns(UserWarning, match=r"decoded-image cache skipped: 36 images need .* max_bytes=1,000"):
        out = attach_decoded_cache(s, max_bytes=1000, progress=False)
    assert out is s and not _entries(tmp_path)
    root = tmp_path / "kitcache" / "decoded"
    assert not list(root.glob(".tmp-*"))


def test_an_unwritable_cache_dir_costs_speed_not_the_run(imagefolder_spec, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("KIT_CACHE_DIR", str(blocker))
    s = load_sources(imagefolder_spec)
    with pytest.warns(UserWarning, match="cannot write it under"):
        assert attach_decoded_cache(s, progress=False) is s


def test_a_file_that_no_longer_decodes_fails_naming_it_and_leaves_no_entry(imagefolder_spec, imagefolder_root,
                                                                             tmp_path):
    s = load_sources(imagefolder_spec)
    bad = imagefolder_root / "train" / "class_c" / "img_07.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match="img_07.png"):
        attach_decoded_cache(s, progress=False)
    assert not _entries(tmp_path) and not list((tmp_path / "kitcache" / "decoded").glob(".tmp-*"))


def test_an_unfinished_or_truncated_entry_is_built_again(imagefolder_spec, tmp_path):
    s = load_sources(imagefolder_spec)
    entry = attach_decoded_cache(s, progress=False).train.decoded.store.folder
    with open(entry / "pixels.bin", "r+b") as f:
        f.truncate(100)
    assert open_entry(entry) is None
    assert np.array_equal(attach_decoded_cache(s, progress=False).train.image(0), read_image(s.train.items[0]))
    (entry / "complete").unlink()
    assert open_entry(entry) is None
    assert attach_decoded_cache(s, progress=False).train.decoded is not None and open_entry(entry) is not None


def test_the_store_pickles_without_its_pixels(imagefolder_spec):
    store = attach_decoded_cache(load_sources(imagefolder_spec), progress=False).train.decoded.store
    store.read(0)  # maps the pixels
    data = pickle.dumps(store)
    assert len(data) < 4000 < os.path.getsize(store.folder / "pixels.bin")  # a spawned worker maps them itself
    assert np.array_equal(pickle.loads(data).read(3), store.read(3))


def test_build_memory_is_bounded_by_bytes_not_image_count():
    # 32-image tasks of 12 MP photos would hold 1.1 GB each: tasks are cut at CHUNK_BYTES
    sizes = [36_000_000] * 5 + [2352] * 40
    chunks = C._chunks([f"p{i}" for i in range(45)], sizes)
    assert [len(p) for p, _ in chunks][:5] == [1, 1, 1, 1, 1]
    assert all(len(p) <= C.CHUNK for p, _ in chunks) and sum(len(p) for p, _ in chunks) == 45
    assert all(n <= C.CHUNK_BYTES or len(p) == 1 for p, n in chunks)


def test_decoded_max_side_covers_every_planned_resize():
    from types import SimpleNamespace

    def plan(*members):  # (input size, crop_pct, TTA spec) of each planned member
        return SimpleNamespace(members=[SimpleNamespace(data_config={"input_size": s, "crop_pct": c},
                                                        recipe=SimpleNamespace(tta=t)) for s, c, t in members])
    tta = Recipe().tta
    assert decoded_max_side(plan((224, 0.875, tta))) == 2 * 256  # eval resize round(224 / 0.875) = 256
    assert decoded_max_side(plan((64, 0.875, tta))) == 146  # resize round(64 / 0.875) = 73
    multi = tta.model_copy(update={"modes": ["none", "multiscale"], "scales": [1.0, 1.5]})
    assert decoded_max_side(plan((64, 0.875, multi))) == 219
    assert decoded_max_side(plan((64, 0.875, tta), (128, 0.875, tta))) == 2 * round(128 / 0.875)
    assert decoded_max_side(plan((64, 0.875, tta.model_copy(update={"resize": 100})))) == 200


_RSS_SCRIPT = """
import os, sys, numpy as np
from PIL import Image
from kit.data import ImageDataset, ImageTable, Sources, create_eval_transform
from kit.data import cache
from kit.data.cache import attach_decoded_cache

cache.CHUNK_BYTES, cache.WINDOW_BYTES = 2 << 20, 4 << 20  # the build holds about this much decoded at once

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

root, n, side = sys.argv[1], 48, 700  # 48 x 700 x 700 x 3 = 70.6 MB decoded
paths = []
for i in range(n):
    a = np.zeros((side, side, 3), np.uint8)
    a[:, :, i % 3] = (np.arange(side) * (i + 1)) % 256
    paths.append(os.path.join(root, f"{i:03d}.png"))
    Image.fromarray(a).save(paths[-1], compress_level=1)
table = ImageTable(np.array([str(i) for i in range(n)]), paths, np.zeros(n, np.int64), ("0",))
cfg = {"input_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0, "interpolation": "area"}
ds = ImageDataset(table, np.arange(n), create_eval_transform(cfg))
ds[0]
anon0, hwm0 = status("RssAnon"), status("VmHWM")
table = attach_decoded_cache(Sources(table), workers=2, progress=False).train
hwm1 = status("VmHWM")
ds = ImageDataset(table, np.arange(n), create_eval_transform(cfg))
for _ in range(2):
    for i in range(n):
        ds[i]
print(os.path.getsize(table.decoded.store.folder / "pixels.bin") // 1024, hwm1 - hwm0, status("RssAnon") - anon0)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc (Linux)")
def test_memory_stays_flat_for_a_store_larger_than_the_budget(tmp_path):
    """A 70 MB store against a 24 MB budget: building it (a 4 MB window of decoded images) raises the peak RSS
    by less than the budget, and reading every image twice through a dataset grows the process's private
    memory by less (the memmap's pages belong to the page cache: clean, shared, dropped under pressure)."""
    budget_kb = 24 * 1024
    env = dict(os.environ, OMP_NUM_THREADS="1", KIT_CACHE_DIR=str(tmp_path / "kitcache"))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS_SCRIPT), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    store_kb, build_peak_kb, read_growth_kb = (int(v) for v in out.stdout.split())
    assert store_kb > 2.5 * budget_kb
    assert build_peak_kb < budget_kb, f"building grew peak RSS by {build_peak_kb} kB"
    assert read_growth_kb < budget_kb, f"reading grew private memory by {read_growth_kb} kB"


def test_processes_attaching_at_once_decode_each_image_once(imagefolder_spec, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    s = load_sources(imagefolder_spec)
    calls = []

    def counted(path):
        calls.append(path)
        return read_image(path)
    monkeypatch.setattr(C, "read_image", counted)
    with ThreadPoolExecutor(3) as pool:  # the lock is a file lock: threads contend for it as processes do
        stores = [f.result().train.decoded.store.folder
                  for f in [pool.submit(attach_decoded_cache, s, progress=False, workers=1) for _ in range(3)]]
    assert len(set(stores)) == 1 and len(calls) == 36
