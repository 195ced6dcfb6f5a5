"""One member over two processes: `torchrun --standalone --nproc-per-node 2 -m kit train RECIPE` with gloo on the
CPU. The model is test_convnext (LayerNorm, no BatchNorm), so that two ranks of 4 images compute the update of one
process's batch of 8 exactly, up to float sums: the two-process member's every epoch, its weights and its
predictions match the one-process run of the same recipe; its run directory holds one copy of each file; one
leaderboard row; killed after an epoch and resumed, it still ends where the uninterrupted run does."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kit.cli import main
from kit.leaderboard import query
from kit.predictions import load_predictions

pytestmark = pytest.mark.timeout(600)


def recipe(kaggle_root, tmp_path, name: str, epochs: int = 2) -> dict:
    return {"name": name, "output_dir": str(tmp_path / "runs"), "leaderboard": str(tmp_path / f"{name}.sqlite"),
            "data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "num_workers": 0},
            "augment": {"input_size": 32},
            "model": {"backbone": "test_convnext", "weights": "none", "strategy": "full", "channels_last": False},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0, "device": "cpu"},
            "tta": {"modes": ["none", "hflip"]}}


def write(tmp_path, d: dict):
    path = tmp_path / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(path, *args, wait=True):
    import kit
    src = str(Path(kit.__file__).resolve().parents[1])  # this checkout's kit, installed or not
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "kit", "train", str(path), *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=500)
    assert p.returncode == 0, out
    return out


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same float sums
    yield tmp_path
    torch.set_num_threads(threads)


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, read from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def member_files(run_dir) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def history(run_dir) -> pd.DataFrame:
    (m,) = (run_dir / "members").iterdir()
    return pd.read_csv(m / "history.csv").drop(columns=["seconds", "train_images_per_s"])


def assert_same_member(one_dir, two_dir):
    h1, h2 = history(one_dir), history(two_dir)
    assert list(h1.columns) == list(h2.columns) and len(h1) == len(h2)
    np.testing.assert_allclose(h2.to_numpy(float), h1.to_numpy(float), rtol=2e-4, atol=1e-6)
    (m1,), (m2,) = (one_dir / "members").iterdir(), (two_dir / "members").iterdir()
    w1 = torch.load(m1 / "best.pt", weights_only=True)["model"]
    w2 = torch.load(m2 / "best.pt", weights_only=True)["model"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4)
    for split in ("oof", "test"):
        p1 = load_predictions(m1 / "preds" / f"{split}_none.npz")
        p2 = load_predictions(m2 / "preds" / f"{split}_none.npz")
        assert list(p1.ids) == list(p2.ids)
        np.testing.assert_allclose(p2.probs, p1.probs, atol=1e-4)


def test_two_processes_train_the_member_one_process_would(kaggle_root, here):
    one = recipe(kaggle_root, here, "one")
    assert main(["train", str(write(here, one))]) == 0
    two = recipe(kaggle_root, here, "two")
    out = torchrun(write(here, two))
    assert "each member by 2 processes together (torchrun)" in " ".join(out.split())
    assert out.count("member 0/0") == 1  # rank 0 alone logs
    one_dir, two_dir = here / "runs" / "one", here / "runs" / "two"
    assert_same_member(one_dir, two_dir)
    # the same files, once each (rank 0 wrote them), and nothing half-written left behind
    assert member_files(two_dir) == member_files(one_dir)
    assert not [f for f in member_files(two_dir) if ".tmp" in f]
    (done,) = (two_dir / "members").glob("*/done.json")
    assert '"processes": 2' in done.read_text()
    lb = query(str(here / "two.sqlite"))
    assert sorted(lb["kind"]) == sorted(query(str(here / "one.sqlite"))["kind"]) and (lb["kind"] == "member").sum() == 1


def test_killed_after_an_epoch_it_resumes_to_the_same_member(kaggle_root, here):
    one = recipe(kaggle_root, here, "one", epochs=3)
    assert main(["train", str(write(here, one))]) == 0
    two = write(here, recipe(kaggle_root, here, "two", epochs=3))
    p = torchrun(two, wait=False)
    last = here / "runs" / "two" / "members"
    deadline = time.time() + 400
    while not list(last.glob("*/last.pt")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    procs = [p.pid, *descendants(p.pid)]  # torchrun starts its ranks in sessions of their own
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped at once (an epoch takes 0.1 s), then killed
        for pid in procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    p.communicate()
    assert list(last.glob("*/last.pt")) and not list(last.glob("*/done.json"))
    out = torchrun(two, "--resume")
    assert_same_member(here / "runs" / "one", here / "runs" / "two")
    assert len(history(here / "runs" / "two")) == 3, out


def test_batch_that_does_not_divide_is_refused(kaggle_root, here):
    d = recipe(kaggle_root, here, "odd")
    d["train"]["batch_size"] = 7
    p = torchrun(write(here, d), wait=False)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "train.batch_size 7 does not divide among the 2 processes torchrun started" in out


def test_kit_run_under_torchrun_is_refused(monkeypatch, kaggle_root, here, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(write(here, recipe(kaggle_root, here, "r")))]) == 2
    assert "kit run under torchrun" in capsys.readouterr().err
