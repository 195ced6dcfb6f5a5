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


# ---------------------------------------------------------------- workers, by measurement

def test_choose_num_workers_takes_the_fastest_and_fewer_workers_on_ties():
    from kit.data.loader import choose_num_workers
    rates = {0: 100.0, 1: 104.0, 2: 300.0, 4: 310.0}
    assert choose_num_workers(None, 8, candidates=rates, measure=rates.get) == 2  # 4 is within 5% of 2
    assert choose_num_workers(None, 8, candidates=[0, 1], measure=rates.get) == 0
    assert choose_num_workers(None, 8, candidates=[2, 0], measure={0: 90.0, 2: 60.0}.get) == 0
    with pytest.raises(ValueError, match="worker counts >= 0"):
        choose_num_workers(None, 8, candidates=[-1, 2], measure=rates.get)


def test_a_single_candidate_is_returned_untimed():
    from kit.data.loader import choose_num_workers

    def never(k):
        raise AssertionError("timed")
    assert choose_num_workers(None, 8, candidates=[3], measure=never) == 3


def test_worker_candidates_follow_the_cores_training_leaves(monkeypatch):
    from kit.data.loader import worker_candidates
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert worker_candidates(2, device="cpu") == [0]  # torch's 2 threads use both cores: nothing to time
    assert worker_candidates(2, device="cpu", step=True) == [0, 1, 2]  # with the step timed, workers may win
    assert worker_candidates(8, device="cpu") == [1, 2, 4]  # spare cores: a worker overlaps loading
    assert worker_candidates(8, device="cuda") == [1, 2, 4]  # all cores but the main process's
    assert worker_candidates(1, device="cuda") == [0]


def _tiny_model():
    import timm
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def test_training_step_leaves_the_model_as_it_was(imagefolder_spec):
    from kit.data.loader import training_step
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = ImageDataset(load_sources(imagefolder_spec).train, np.arange(4), create_eval_transform(CFG))
    step = training_step(model, channels_last=True)
    step(next(iter(make_loader(ds, 4, shuffle=False, num_workers=0, seed=0))))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_choose_num_workers_times_briefly_and_keeps_the_random_state(imagefolder_spec):
    import time
    from kit.data.loader import choose_num_workers, measure_workers, training_step
    ds = ImageDataset(load_sources(imagefolder_spec).train, np.arange(12), create_train_transform(AUGMENT, CFG))
    step = training_step(_tiny_model())
    torch.manual_seed(5)
    state = torch.get_rng_state()
    t0 = time.perf_counter()
    rates = measure_workers(ds, 4, [0, 1], seconds=0.4, step=step)
    assert time.perf_counter() - t0 < 10  # 0.4 s of timing, plus a worker's start
    assert sorted(rates) == [0, 1] and all(r > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), state)  # the member's random stream is not shifted
    assert choose_num_workers(ds, 4, candidates=[0, 1], seconds=0.2, step=step) in (0, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_channels_last_stacks_of_the_samples(imagefolder_spec, workers):
    table = load_sources(imagefolder_spec).train
    ds = ImageDataset(table, np.arange(6), create_eval_transform(CFG))
    x, y, rows = next(iter(make_loader(ds, batch_size=3, shuffle=False, num_workers=workers, seed=0)))
    # the training loop's .contiguous(memory_format=torch.channels_last) is then free
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    assert torch.equal(x, torch.stack([ds[i][0] for i in range(3)]))
    assert y.tolist() == table.labels[:3].tolist() and rows.tolist() == [0, 1, 2]


def test_a_worker_count_that_cannot_run_is_timed_as_zero(imagefolder_spec, monkeypatch):
    from kit.data import loader as L
    ds = ImageDataset(load_sources(imagefolder_spec).train, np.arange(4), create_eval_transform(CFG))

    def timing(dataset, batch_size, num_workers, seconds, step=None):
        if num_workers:
            raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Bus error. It is possible that "
                               "dataloader's workers are out of shared memory.")
        return 50.0
    monkeypatch.setattr(L, "time_loader", timing)
    with pytest.warns(UserWarning, match="2 DataLoader workers failed while timing them"):
        assert L.measure_workers(ds, 2, [0, 2], seconds=0.1) == {0: 50.0, 2: 0.0}
    with pytest.warns(UserWarning):
        assert L.choose_num_workers(ds, 2, candidates=[0, 2], seconds=0.1) == 0
