"""kit.cli: bad input exits 2 with the message and no traceback; --help lists the subcommands."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kit.cli import build_parser, main

SUBCOMMANDS = ("init", "plan", "tune", "advise", "run", "distill", "export", "train", "predict", "submit", "classify", "leaderboard", "score", "bench")


def _kit(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_bad_recipe_exits_2_with_the_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    p = _kit("train", str(bad))
    assert p.returncode == 2
    stderr = " ".join(p.stderr.split())  # rich wraps long lines
    assert "unknown key 'train.lrr'" in stderr and "did you mean 'train.lr'" in stderr and "bad.yaml" in stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_help_lists_the_subcommands():
    p = _kit("--help")
    assert p.returncode == 0
    for name in SUBCOMMANDS:
        assert name in p.stdout
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)


@pytest.mark.parametrize("args, expected", [
    (["train", "{missing}"], "does not exist"),
    (["train", "{empty}", "--set", "train.lr"], "key.path=value"),
    (["train", "{empty}", "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
    (["run", "{empty}", "--set", "model.backbone=resnet1"], "is not a timm model"),
])
def test_usage_errors_exit_2_in_process(tmp_path, capsys, args, expected):
    (tmp_path / "empty.yaml").write_text("")
    paths = {"missing": tmp_path / "missing.yaml", "empty": tmp_path / "empty.yaml"}
    assert main([a.format(**paths) for a in args]) == 2
    assert expected in " ".join(capsys.readouterr().err.split())


def test_member_out_of_range_exits_2(tmp_path, kaggle_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: kaggle, root: {kaggle_root}, image_suffix: .jpg, split: kfold, folds: 3,"
                      f" num_workers: 0}}\nmodel: {{backbone: test_resnet, weights: none}}\n"
                      f"leaderboard: sqlite:///{tmp_path / 'lb.sqlite'}\n")
    assert main(["train", str(recipe), "--member", "7"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--member '7'" in err and "members 0..2" in err
    assert not list((tmp_path / "runs" / "r").glob("members/*"))  # nothing trained


@pytest.mark.parametrize("folder", ["v[i]", "v[/x]"])
def test_error_messages_are_printed_verbatim(tmp_path, capsys, folder):
    missing = tmp_path / folder / "r.yaml"
    assert main(["train", str(missing)]) == 2
    assert str(missing) in " ".join(capsys.readouterr().err.split())


def test_submit_a_run_directory_from_another_directory(tmp_path, kaggle_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: kaggle, root: {kaggle_root}, image_suffix: .jpg, split: kfold, folds: 3,"
                      f" num_workers: 0}}\naugment: {{input_size: 32}}\n"
                      f"model: {{backbone: test_resnet, weights: none, strategy: full, channels_last: false}}\n"
                      f"train: {{epochs: 1, batch_size: 8}}\nleaderboard: {tmp_path / 'lb.sqlite'}\n")
    assert main(["train", str(recipe)]) == 0
    run_dir = tmp_path / "runs" / "r"
    assert len(list(run_dir.glob("members/*/done.json"))) == 3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["submit", str(run_dir)]) == 0
    assert (run_dir / "submission.csv").exists() and not (elsewhere / "runs").exists()
