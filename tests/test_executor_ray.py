"""kit.executor with Ray, on a local Ray instance started here (loopback, 2 CPUs): a 4-member grid (test_resnet at
32 px, 1 epoch, 2 seeds x 2 folds) through `kit run --executor ray` gives the sequential run's predictions, files
and leaderboard rows; a member whose worker dies once is retried and finishes; one that dies every time is
reported by name while the others are kept; pseudo-label rounds go out one after the other. The Ray tests are
skipped, with the reason, where Ray is missing or cannot start."""
from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest
import yaml

from kit import run as R
from kit.cli import main
from kit.errors import RecipeError, RunDirError
from kit.executor import connect_ray, train_members
from kit.leaderboard import query
from kit.context import prepare_run
from kit.recipe import recipe_from_dict

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'kit[ray]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # this module's instance is a local one
        try:
            opened = connect_ray(num_cpus=2)
        except Exception as e:  # noqa: BLE001 - any failure to start means: no Ray here, say why
            pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
    yield ray
    if opened:
        ray.shutdown()


def grid(kaggle_root, tmp_path, where: str, seeds=(0, 1)) -> dict:
    return {"name": "grid", "output_dir": str(tmp_path / where), "leaderboard": str(tmp_path / f"{where}.sqlite"),
            "data": {"source": "kaggle", "root": str(kaggle_root), "image_suffix": ".jpg", "split": "kfold",
                     "folds": 2, "num_workers": 0},
            "augment": {"input_size": 32},
            "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False},
            "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
            "tta": {"modes": ["none", "hflip"]},
            "ensemble": {"seeds": list(seeds)}}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one for the module: the tasks' runtime_env (and workers) stay the same


@pytest.fixture
def here(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository
    monkeypatch.setenv("KIT_CACHE_DIR", str(cache_dir))  # nor in ~/.cache; the tasks get it too
    return tmp_path


def files(run_dir) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def rows(url) -> list[tuple]:
    df = query(url)
    return sorted(zip(df["kind"], df["name"], df["tta_mode"].fillna(""), df["score"].fillna(-1.0)))


def test_local_instance_listens_on_loopback_only(local_ray):
    assert local_ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in local_ray.nodes()} == {"127.0.0.1"}
    assert local_ray.cluster_resources()["CPU"] == 2


def test_ray_run_matches_the_sequential_run(local_ray, kaggle_root, here, capsys):
    R.run(recipe_from_dict(grid(kaggle_root, here, "seq")), log=lambda msg: None)
    (here / "grid.yaml").write_text(yaml.safe_dump(grid(kaggle_root, here, "ray")))
    assert main(["run", str(here / "grid.yaml"), "--executor", "ray"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    seq, par = here / "seq" / "grid", here / "ray" / "grid"
    assert files(par) == files(seq)
    preds = sorted(p.relative_to(seq) for p in seq.glob("members/*/preds/*.npz"))
    assert len(preds) == 4 * 2 * 2  # members x (oof, test) x TTA modes
    for rel in preds:
        with np.load(seq / rel, allow_pickle=False) as a, np.load(par / rel, allow_pickle=False) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{rel}: {key}")
    assert rows(here / "ray.sqlite") == rows(here / "seq.sqlite")
    assert {"member", "tta", "ensemble", "submission"} <= {r[0] for r in rows(here / "ray.sqlite")}
    for i, name in enumerate(f"test_resnet-s{s}-f{f}" for s in (0, 1) for f in (0, 1)):
        assert f"member {i}/3 {name}: sent to Ray (1 CPU)" in out
        assert f"[{name}] epoch 1/1" in out  # the task's own lines, passed on by the driver
        assert f"member {name}: none " in out  # its scores, as the sequential run prints them
    # a second run trains nothing: every member finished before
    assert main(["train", str(here / "grid.yaml"), "--executor", "ray"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 4 and "sent to Ray" not in out


def crash_hook(folder, once: str, always: str) -> tuple[dict, object]:
    """A runtime_env whose workers die (os._exit(1), as if killed) when they start fitting member `once` the first
    time (a marker file remembers) and member `always` every time. Python imports sitecustomize from PYTHONPATH
    when a worker starts."""
    folder.mkdir()
    marker = folder / "crashed"
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        import kit.train
        _fit = kit.train.fit

        def fit(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw):
            marker, name = pathlib.Path({str(marker)!r}), pathlib.Path(out_dir).name
            if name == {always!r} or (name == {once!r} and not marker.exists()):
                marker.touch()
                os._exit(1)
            return _fit(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw)
        kit.train.fit = fit
    """))
    return {"env_vars": {"PYTHONPATH": f"{folder}{os.pathsep}${{PYTHONPATH}}"}}, marker


def test_dead_workers_retried_once_then_reported_by_name(local_ray, kaggle_root, here):
    # one seed x 2 folds x 2 pseudo-label rounds: round 1 (members 2, 3) learns from round 0's blend
    raw = dict(grid(kaggle_root, here, "crash", seeds=(0,)), pseudo={"rounds": 1, "threshold": 0.01})
    ctx = prepare_run(recipe_from_dict(raw))
    names = [m.name for m in ctx.plan.members]
    assert names == ["test_resnet-s0-f0", "test_resnet-s0-f1", "test_resnet-s0-r1-f0", "test_resnet-s0-r1-f1"]
    env, marker = crash_hook(here / "hook", once=names[1], always=names[3])
    lines = []
    with pytest.raises(RunDirError, match=rf"1 member\(s\) failed on Ray \({names[3]}: WorkerCrashedError after one "
                                          rf"retry.*the other members' results are kept: train these again with: "
                                          rf"kit train .*crash/grid --member 3 --executor ray"):
        train_members(ctx, ctx.plan.members, "ray", runtime_env=env, log=lines.append)
    # member 1 died once and finished on its retry; member 3 died twice and is named; the others were recorded
    assert marker.exists()
    assert sum(line.startswith(f"[{names[1]}] training on ") for line in lines) == 2
    failed = [line for line in lines if "failed on Ray" in line]
    assert len(failed) == 1 and failed[0].startswith(f"member {names[3]}: failed on Ray: WorkerCrashedError after")
    sent = [i for i, line in enumerate(lines) if "sent to Ray" in line]
    teacher = next(i for i, line in enumerate(lines) if line.startswith("round 0: "))
    assert sent[1] < teacher < sent[2]  # round 1 went out after round 0 had finished and been blended
    done = [m.name for m in ctx.plan.members if (ctx.run_dir / "members" / m.name / "done.json").exists()]
    assert done == names[:3]
    assert {r[1] for r in rows(here / "crash.sqlite") if r[0] in ("member", "tta")} == set(names[:3])
    # trained again without crashes: only member 3 runs, and the run finishes as a sequential one would
    lines.clear()
    records = train_members(ctx, ctx.plan.members, "ray", log=lines.append)
    assert [r["member"] for r in records] == names
    assert [line for line in lines if "sent to Ray" in line] == [f"member 3/3 {names[3]}: sent to Ray (1 CPU)"]
    assert R.finish(ctx).submission.exists()


def test_refits_go_out_after_the_members_they_repeat(local_ray, kaggle_root, here):
    """data.refit: a refit trains for the epochs its validated member kept, so it is sent once that one has
    finished (sent together, the refits failed: 'train test_resnet-s0-f0 first')."""
    raw = grid(kaggle_root, here, "refit", seeds=(0,))
    raw["data"].update(split="holdout", refit=[0, 1])
    raw["train"]["epochs"] = 2
    ctx = prepare_run(recipe_from_dict(raw))
    lines = []
    records = train_members(ctx, ctx.plan.members, "ray", log=lines.append)
    assert [r["member"] for r in records] == ["test_resnet-s0-f0", "test_resnet-s0-refit", "test_resnet-s0-refit-s1"]
    sent = [i for i, line in enumerate(lines) if "sent to Ray" in line]
    finished = next(i for i, line in enumerate(lines) if line.startswith("member test_resnet-s0-f0: "))
    assert sent[0] < finished < sent[1]
    assert {r["epochs"] for r in records[1:]} == {records[0]["best_epoch"] + 1}


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, kaggle_root, here, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    ctx = prepare_run(recipe_from_dict(grid(kaggle_root, here, "noray", seeds=(0,))))
    with pytest.raises(RecipeError, match=r"pip install 'kit\[ray\]'"):
        train_members(ctx, ctx.plan.members, "ray")
    with pytest.raises(RecipeError, match="--address 10.0.0.5:6379 is the address of a Ray cluster; add --executor"):
        train_members(ctx, ctx.plan.members, "local", address="10.0.0.5:6379")
    with pytest.raises(RecipeError, match="'slurm' is not an executor; valid: local, ray"):
        train_members(ctx, ctx.plan.members, "slurm")
    assert not (ctx.run_dir / "members").exists()
    (here / "grid.yaml").write_text(yaml.safe_dump(grid(kaggle_root, here, "cli", seeds=(0,))))
    assert main(["run", str(here / "grid.yaml"), "--executor", "ray"]) == 2  # one line, no traceback
    assert main(["train", str(here / "grid.yaml"), "--address", "10.0.0.5:6379"]) == 2
    assert "pip install 'kit[ray]'" in " ".join(capsys.readouterr().err.split())
    assert not (here / "cli").exists()  # refused before the run directory was opened


class FakeRay:
    def __init__(self, resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_a_member_gets_one_gpu_where_the_cluster_has_gpus_else_a_cpu_share(kaggle_root, here, monkeypatch):
    from kit.executor import _task_options
    monkeypatch.setenv("KIT_TUNE_GRACE_S", "7")
    raw = grid(kaggle_root, here, "opts", seeds=(0,))
    member = prepare_run(recipe_from_dict(raw)).plan.members[0]
    gpu = _task_options(FakeRay({"CPU": 16, "GPU": 2}), member, 1, {"env_vars": {"OMP_NUM_THREADS": "3"}, "pip": []})
    assert (gpu["num_gpus"], gpu["num_cpus"], gpu["max_retries"], gpu["retry_exceptions"]) == (1, 1, 1, False)
    assert gpu["runtime_env"]["pip"] == [] and gpu["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "3"  # caller's
    assert gpu["runtime_env"]["env_vars"]["KIT_CACHE_DIR"] == os.environ["KIT_CACHE_DIR"]  # the driver's KIT_*
    assert gpu["runtime_env"]["env_vars"]["KIT_TUNE_GRACE_S"] == "7"
    cpu = _task_options(FakeRay({"CPU": 16}), member, 2, {})
    assert (cpu["num_gpus"], cpu["num_cpus"], cpu["runtime_env"]["env_vars"]["OMP_NUM_THREADS"]) == (0, 2, "2")
    raw = dict(raw, output_dir=str(here / "on_cpu"), train=dict(raw["train"], device="cpu"))
    on_cpu = prepare_run(recipe_from_dict(raw)).plan.members[0]
    assert _task_options(FakeRay({"CPU": 16, "GPU": 2}), on_cpu, 1, {})["num_gpus"] == 0  # told to use the CPU


def test_a_task_on_a_node_without_the_shared_run_directory_says_so(here):
    from kit.executor import member_task
    with pytest.raises(RunDirError, match=r"has no .*/nowhere/grid: kit's Ray tasks need the run directory and the "
                                          r"driver's current directory at the same paths on every node"):
        member_task(str(here / "nowhere" / "grid"), 0, str(here), True)
