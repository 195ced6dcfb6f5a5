"""Several `kit tune` workers on one PostgreSQL study, one of them killed mid-trial.

Needs a server: `eval "$(.ci/postgres.sh)"` sets KIT_TEST_POSTGRES_URL; without it (or with the server down) the
test skips, saying why. Heartbeat 1 s and grace period 3 s (via the environment) keep it to ~30 s.

Three workers start together; A is killed with SIGKILL during its first trial. B and C go on until the study
holds TOTAL finished trials; A's trial, silent for the grace period, is failed and re-queued with its parameters
by whichever of them starts a trial (or finishes) next, and run under a new number.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.postgres
URL_ENV = "KIT_TEST_POSTGRES_URL"
TOTAL = 4  # finished trials the study asks for, from all workers together
EPOCHS = 10  # ~0.1 s an epoch: a trial lasts a few seconds, long enough to be killed in the middle


@pytest.fixture
def postgres_url():
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"{URL_ENV} is not set; start a throwaway server with: eval \"$(.ci/postgres.sh)\"")
    import sqlalchemy
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        pytest.skip(f"PostgreSQL at {url} is unreachable: {type(e).__name__}: {str(e).splitlines()[0]}")
    return url


def worker_command(recipe_path: Path, url: str, study: str) -> list[str]:
    """`python -m kit tune ...` once kit.cli has the subcommand, else the same call through kit.tune.tune."""
    argv = ["tune", str(recipe_path), "--trials", "20", "--total", str(TOTAL), "--storage", url, "--study", study]
    try:
        from kit.cli import build_parser
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's "invalid choice" while the CLI lacks it
            build_parser().parse_args(argv)
        return [sys.executable, "-m", "kit", *argv]
    except SystemExit:
        code = (f"from kit.recipe import load_recipe; from kit.tune import tune; "
                f"tune(load_recipe({str(recipe_path)!r}), 20, storage={url!r}, study_name={study!r}, total={TOTAL})")
        return [sys.executable, "-c", code]


def test_workers_share_a_study_and_a_killed_trial_is_retried(imagefolder_spec, tmp_path, postgres_url):
    import optuna
    from optuna.trial import TrialState
    from kit.recipe import load_recipe
    from kit.tune import create_study

    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(tmp_path / "runs"), "leaderboard": f"sqlite:///{tmp_path}/lb.sqlite",
        "data": {"source": "imagefolder", "root": imagefolder_spec.root, "num_workers": 0},
        "augment": {"input_size": 32}, "model": {"backbone": "test_resnet", "weights": "none", "channels_last": False},
        "train": {"epochs": EPOCHS, "batch_size": 8, "warmup_epochs": 0, "metric": "log_loss", "device": "cpu"},
        "search": {"pruner": "none",
                   "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}}}))
    env = {**os.environ, "KIT_TUNE_HEARTBEAT_S": "1", "KIT_TUNE_GRACE_S": "3", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "KIT_CACHE_DIR": str(tmp_path / "cache")}
    study_name = f"kit-test-{uuid.uuid4().hex[:8]}"
    # Created before the workers start, as the docs say (kit tune --create-only): workers racing to create the
    # tables of an empty database can fail.
    study = create_study(load_recipe(recipe_path), postgres_url, study_name)
    command = worker_command(recipe_path, postgres_url, study_name)
    logs, procs = {}, {}

    def start(name):
        logs[name] = open(tmp_path / f"{name}.log", "w")
        procs[name] = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=logs[name], stderr=subprocess.STDOUT)

    try:
        for name in ("a", "b", "c"):
            start(name)
        victim = wait_for_running_trial(study, procs["a"].pid, timeout=120)
        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait()
        for name in ("b", "c"):
            assert procs[name].wait(timeout=240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).trials
    try:
        states = [t.state for t in trials]
        summary = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states, summary
        assert states.count(TrialState.COMPLETE) >= TOTAL, summary
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert [t.number for t in failed] == [victim.number], summary  # the killed trial, and only it
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, summary
        assert retry[0].params == victim.params and retry[0].number > victim.number
        assert retry[0].user_attrs["run_dir"] != victim.user_attrs["run_dir"]  # a new number, a new directory
        assert Path(retry[0].user_attrs["run_dir"], "members").is_dir()
        assert [t.number for t in trials] == list(range(len(trials)))  # no trial lost
        workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
        assert str(procs["a"].pid) in workers and len(workers) >= 2
    finally:
        optuna.delete_study(study_name=study_name, storage=postgres_url)


def wait_for_running_trial(study, pid: int, timeout: float):
    """The trial worker `pid` is running, once it has reported an epoch: killed then, it dies mid-trial."""
    from optuna.trial import TrialState
    deadline = time.time() + timeout
    while time.time() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{pid}") and t.intermediate_values:
                return t
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} did not start a trial within {timeout} s")
