import numpy as np
import pytest
import torch

from kit.data import (ImageDataset, ImageTable, create_eval_transform, create_train_transform, load_sources,
                      make_loader)
from kit.recipe import AugmentSpec

CFG = {"input_size": 24, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0,
       "interpolation": "bilinear"}
AUGMENT = AugmentSpec(train=[{"RandomResizedCrop": {"scale": [0.3, 1.0]}}, {"HorizontalFlip": {"p": 0.5}},
                             {"ColorJitter": {"p": 0.8}}])


def _epochs(loader, n=2):
    return [[(x.clone(), y.clone(), r.clone()) for x, y, r in loader] for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(r1, r2)
                                    for (x1, y1, r1), (x2, y2, r2) in zip(a, b))


def test_dataset_items(imagefolder_spec):
    s = load_sources(imagefolder_spec)
    ds = ImageDataset(s.train, [3, 15], create_eval_transform(CFG))
    x, y, row = ds[1]
    assert len(ds) == 2 and x.dtype == torch.float32 and tuple(x.shape) == (3, 24, 24)
    assert y == s.train.labels[15] == 1 and row == 15
    x, y, row = ImageDataset(s.test, range(len(s.test)), create_eval_transform(CFG))[0]
    assert y == -1 and row == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_over_two_epochs(imagefolder_spec, workers):
    table = load_sources(imagefolder_spec).train

    def run(seed):
        ds = ImageDataset(table, np.arange(12), create_train_transform(AUGMENT, CFG))
        return _epochs(make_loader(ds, batch_size=4, shuffle=True, num_workers=workers, seed=seed))

    a, b, c = run(5), run(5), run(6)
    assert _same(a[0], b[0]) and _same(a[1], b[1])
    assert not _same(a[0], a[1])  # a new order and new augmentations each epoch
    assert not _same(a[0], c[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_differs_between_epochs_and_seeds(imagefolder_spec, workers):
    table = load_sources(imagefolder_spec).train

    def run(seed):  # unshuffled: only the augmentation can make batches differ
        ds = ImageDataset(table, np.arange(8), create_train_transform(AUGMENT, CFG))
        return _epochs(make_loader(ds, batch_size=4, shuffle=False, num_workers=workers, seed=seed))

    a, b = run(1), run(2)
    assert all(torch.equal(r1, r2) for (_, _, r1), (_, _, r2) in zip(a[0], a[1]))
    assert not torch.equal(a[0][0][0], a[1][0][0])
    assert not torch.equal(a[0][0][0], b[0][0][0])


def test_workers_augment_differently(imagefolder_spec):
    table = load_sources(imagefolder_spec).train
    same = ImageTable(np.array(["a"] * 4), [table.items[0]] * 4, np.zeros(4, dtype=np.int64), table.classes)
    ds = ImageDataset(same, np.arange(4), create_train_transform(AUGMENT, CFG))
    # batch size 1, 2 workers: rows 0 and 2 come from worker 0, rows 1 and 3 from worker 1
    xs = [x for x, _, _ in make_loader(ds, batch_size=1, shuffle=False, num_workers=2, seed=0)]
    assert not torch.equal(xs[0], xs[1])  # forked workers must not share one augmentation stream
    assert not torch.equal(xs[0], xs[2])


def test_loader_settings():
    ds = ImageDataset(load_sources_digits_small(), np.arange(10), create_eval_transform(CFG))
    loader = make_loader(ds, batch_size=4, shuffle=False, num_workers=2, seed=0, drop_last=True)
    assert loader.persistent_workers and loader.prefetch_factor == 2 and loader.drop_last
    assert loader.pin_memory == torch.cuda.is_available()
    assert len(loader) == 2
    assert make_loader(ds, batch_size=4, shuffle=False, num_workers=0, seed=0).persistent_workers is False


def load_sources_digits_small():
    from kit.recipe import DataSpec
    return load_sources(DataSpec(limit=10, digits_size=16)).train


# ---------------------------------------------------------------- per-sample seeds: exact with any worker count

def _train_loader(table, workers, seed=3, batch_size=4, n=12):
    ds = ImageDataset(table, np.arange(n), create_train_transform(AUGMENT, CFG))
    return make_loader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, seed=seed)


def test_batches_are_identical_with_0_and_2_workers(imagefolder_spec):
    table = load_sources(imagefolder_spec).train
    a = _epochs(_train_loader(table, 0), 3)
    b = _epochs(_train_loader(table, 2), 3)
    for ea, eb in zip(a, b):
        assert _same(ea, eb)
    assert not _same(a[0], a[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_is_the_same_whether_or_not_earlier_epochs_ran(imagefolder_spec, workers):
    table = load_sources(imagefolder_spec).train
    straight = _epochs(_train_loader(table, 0), 3)  # epochs 0, 1, 2 in one process
    resumed = _train_loader(table, workers)
    resumed.set_epoch(2)  # a run resumed at epoch 2: epochs 0 and 1 never iterated here
    assert _same([(x, y, r) for x, y, r in resumed], straight[2])
    resumed.set_epoch(1)
    assert _same([(x, y, r) for x, y, r in resumed], straight[1])
    assert _same([(x, y, r) for x, y, r in resumed], straight[2])  # without set_epoch: the next epoch


def test_a_sample_is_augmented_by_its_row_not_its_position(imagefolder_spec):
    table = load_sources(imagefolder_spec).train
    tf = create_train_transform(AUGMENT, CFG)
    whole = {int(r): x for xs, _, rs in make_loader(ImageDataset(table, np.arange(12), tf), 4, shuffle=False,
                                                     num_workers=0, seed=3) for x, r in zip(xs, rs)}
    part = make_loader(ImageDataset(table, [7, 2], tf), 2, shuffle=False, num_workers=0, seed=3)
    xs, _, rs = next(iter(part))
    assert rs.tolist() == [7, 2] and torch.equal(xs[0], whole[7]) and torch.equal(xs[1], whole[2])


# ---------------------------------------------------------------- errors from workers

@pytest.mark.parametrize("workers", [0, 2])
def test_a_kit_error_in_a_worker_reaches_the_caller_as_itself(imagefolder_spec, imagefolder_root, workers):
    from kit.data import ImageReadError, read_image
    table = load_sources(imagefolder_spec).train
    bad = imagefolder_root / "train" / "class_a" / "img_03.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError) as expected:
        read_image(str(bad))
    loader = make_loader(ImageDataset(table, np.arange(8), create_eval_transform(CFG)), batch_size=2,
                         shuffle=False, num_workers=workers, seed=0)
    with pytest.raises(ImageReadError) as e:
        list(loader)
    assert type(e.value) is ImageReadError and str(e.value) == str(expected.value)  # one line, kit's own
    assert "worker process" not in str(e.value) and "Traceback" not in str(e.value)
    with pytest.raises(ImageReadError):  # the persistent workers still serve the next epoch
        list(loader)
