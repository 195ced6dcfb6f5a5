"""kit.executor with Ray, on a local Ray instance started here (loopback, 2 CPUs): a 4-member grid (test_resnet at
32 px, 1 epoch, 2 seeds x 2 folds) through `kit run --executor ray` gives the sequential run's predictions, files
and leaderboard rows; a member whose worker dies once is retried and finishes; one that dies every time is
reported by name while the others are kept. Skipped, with the reason, where Ray is missing or cannot start."""
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
from kit.members import prepare_run
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


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))  # nor in ~/.cache; the tasks get it too
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


def crash_hook(folder, member: str, once: bool) -> tuple[dict, object]:
    """A runtime_env whose workers die (os._exit(1), as if killed) when they start fitting `member`: the first
    time only (a marker file remembers), or every time. Python imports sitecustomize from PYTHONPATH at start."""
    folder.mkdir()
    marker = folder / "crashed"
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        import kit.train
        _fit = kit.train.fit

        def fit(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw):
            marker = pathlib.Path({str(marker)!r})
            if pathlib.Path(out_dir).name == {member!r} and ({not once} or not marker.exists()):
                marker.touch()
                os._exit(1)
            return _fit(model, train_loader, val_loader, val_labels, model_spec, spec, out_dir, **kw)
        kit.train.fit = fit
    """))
    return {"env_vars": {"PYTHONPATH": f"{folder}{os.pathsep}${{PYTHONPATH}}"}}, marker


def test_a_member_whose_worker_dies_once_is_retried_and_finishes(local_ray, kaggle_root, here):
    ctx = prepare_run(recipe_from_dict(grid(kaggle_root, here, "crash", seeds=(0,))))
    env, marker = crash_hook(here / "hook", "test_resnet-s0-f1", once=True)
    lines = []
    records = train_members(ctx, ctx.plan.members, "ray", runtime_env=env, log=lines.append)
    assert marker.exists()  # the first attempt did die
    assert [r["member"] for r in records] == ["test_resnet-s0-f0", "test_resnet-s0-f1"]
    assert not any("failed" in line for line in lines)
    assert sum("training on" in line for line in lines if line.startswith("[test_resnet-s0-f1]")) == 2
    assert {r[1] for r in rows(here / "crash.sqlite")} == {"test_resnet-s0-f0", "test_resnet-s0-f1"}
    assert R.finish(ctx).submission.exists()


def test_a_member_whose_worker_always_dies_is_reported_and_the_others_kept(local_ray, kaggle_root, here):
    ctx = prepare_run(recipe_from_dict(grid(kaggle_root, here, "dies", seeds=(0,))))
    env, _ = crash_hook(here / "hook", "test_resnet-s0-f1", once=False)
    lines = []
    with pytest.raises(RunDirError, match=r"1 member\(s\) failed on Ray \(test_resnet-s0-f1: WorkerCrashedError "
                                          r"after one retry.*kit train .*dies/grid --member 1 --executor ray"):
        train_members(ctx, ctx.plan.members, "ray", runtime_env=env, log=lines.append)
    assert any(line.startswith("member test_resnet-s0-f1: failed on Ray") for line in lines)
    assert (ctx.run_dir / "members" / "test_resnet-s0-f0" / "done.json").exists()
    assert not (ctx.run_dir / "members" / "test_resnet-s0-f1" / "done.json").exists()
    assert {r[1] for r in rows(here / "dies.sqlite")} == {"test_resnet-s0-f0"}  # recorded before the error


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, kaggle_root, here):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    ctx = prepare_run(recipe_from_dict(grid(kaggle_root, here, "noray", seeds=(0,))))
    with pytest.raises(RecipeError, match=r"pip install 'kit\[ray\]'"):
        train_members(ctx, ctx.plan.members, "ray")
    with pytest.raises(RecipeError, match="--address 10.0.0.5:6379 is the address of a Ray cluster; add --executor"):
        train_members(ctx, ctx.plan.members, "local", address="10.0.0.5:6379")
    with pytest.raises(RecipeError, match="'slurm' is not an executor; valid: local, ray"):
        train_members(ctx, ctx.plan.members, "slurm")
    assert not (ctx.run_dir / "members").exists()
