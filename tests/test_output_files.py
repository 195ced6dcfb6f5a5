"""Nothing is overwritten, nothing is lost: kit's one writer of files a user names (kit.rundir.write_new_file),
`kit leaderboard` exports to standard output unless --output, commands with nothing new write nothing into a run
directory (so a read-only one works), and rows a broken leaderboard could not take wait in the run until it works."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest

from kit.cli import main
from kit.leaderboard import query
from test_inference import finished_run, make_kaggle, tiny_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    with finished_run(tmp_path_factory, "outputs") as (base, recipe, root, _):
        yield recipe.run_dir, base / "lb.sqlite"


@pytest.fixture
def run_dir(finished, tmp_path, monkeypatch):
    """The finished run, where it was made (the tests using it must leave it as it is: that is what they check)."""
    monkeypatch.setenv("KIT_CACHE_DIR", str(finished[0].parent.parent / "cache"))
    monkeypatch.chdir(tmp_path)
    return finished[0]


def _snapshot(folder) -> dict:
    """Every path under `folder` with its size, mtime and inode: any write shows."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(folder.rglob("*"))}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


# ---------------------------------------------------------------- kit leaderboard exports

@pytest.mark.parametrize("fmt, head", [("md", "## kit leaderboard"), ("csv", "rank,name"), ("html", "<!doctype")])
def test_format_without_output_prints_to_standard_output(finished, tmp_path, monkeypatch, capsys, fmt, head):
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--url", str(finished[1]), "--format", fmt]) == 0
    assert capsys.readouterr().out.startswith(head)
    assert list(tmp_path.iterdir()) == []  # no leaderboard.<ext> left in the current directory


def test_output_refuses_an_existing_file_unless_force(finished, tmp_path, capsys):
    out = tmp_path / "board.md"
    out.write_text("precious\n")
    assert main(["leaderboard", "--url", str(finished[1]), "--output", str(out)]) == 2
    assert "board.md already exists and was not overwritten; pass --force" in _one_line_error(capsys)
    assert out.read_text() == "precious\n"
    assert main(["leaderboard", "--url", str(finished[1]), "--output", str(out), "--force"]) == 0
    assert out.read_text().startswith("## kit leaderboard")


def test_output_never_writes_onto_the_database_it_reads(finished, tmp_path, capsys):
    db = tmp_path / "lb.sqlite"
    shutil.copyfile(finished[1], db)
    before = db.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["leaderboard", "--url", str(db), "--format", "csv", "--output", str(db), *extra]) == 2
        assert "which this command reads; it is never overwritten, even with --force" in _one_line_error(capsys)
    assert db.read_bytes() == before
    (tmp_path / "link.csv").symlink_to(db)  # the same file under another name
    assert main(["leaderboard", "--url", str(db), "--format", "csv", "--output", str(tmp_path / "link.csv"),
                 "--force"]) == 2
    assert db.read_bytes() == before and len(query(str(db))) > 0


def test_output_needs_an_existing_folder_and_a_file_path(finished, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "board.html"
    assert main(["leaderboard", "--url", str(finished[1]), "--output", str(missing)]) == 2
    assert f"the folder {missing.parent} does not exist" in _one_line_error(capsys)
    assert not (tmp_path / "no").exists()
    assert main(["leaderboard", "--url", str(finished[1]), "--format", "md", "--output", str(tmp_path)]) == 2
    assert "is a folder; give a file path" in _one_line_error(capsys)


def test_a_corrupt_leaderboard_is_one_line(tmp_path, capsys):
    db = tmp_path / "lb.sqlite"
    db.write_bytes(b"not a database" * 300)
    assert main(["leaderboard", "--url", str(db)]) == 2
    err = _one_line_error(capsys)
    assert "file is not a database" in err and str(db) in err and "move it aside" in err


# ---------------------------------------------------------------- a run directory only read

@pytest.mark.parametrize("args", [["submit"], ["predict", "--tta", "none"], ["run"], ["train"]])
def test_commands_with_nothing_new_write_nothing_into_the_run(run_dir, capsys, args):
    before = _snapshot(run_dir)
    assert main([args[0], str(run_dir), *args[1:]]) == 0
    assert _snapshot(run_dir) == before


def _immutable(folder, on: bool) -> bool:
    try:
        return subprocess.run(["chattr", "-R", "+i" if on else "-i", str(folder)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_read_only_run_directory_still_submits_and_repredicts(run_dir, capsys):
    """chattr +i, as the hostile suite did (root ignores file modes); skipped where chattr cannot."""
    if not _immutable(run_dir, True):
        pytest.skip("chattr +i is not available here")
    try:
        assert main(["submit", str(run_dir)]) == 0
        assert main(["predict", str(run_dir), "--tta", "none"]) == 0
        capsys.readouterr()
        assert main(["predict", str(run_dir), "--tta", "vflip"]) == 2  # something new: said in one line
        assert "cannot write" in _one_line_error(capsys)
    finally:
        _immutable(run_dir, False)


# ---------------------------------------------------------------- rows a broken leaderboard could not take

def test_rows_wait_in_the_run_until_the_leaderboard_works(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_kaggle(tmp_path / "kaggle")
    db = tmp_path / "lb.sqlite"
    db.write_bytes(b"garbage " * 512)  # a damaged SQLite file
    recipe = tiny_recipe(tmp_path, root, leaderboard=str(db))
    import yaml
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["run", str(path)]) == 0  # the run finishes; the rows are kept
    err = capsys.readouterr().err
    assert "warning: cannot write to the leaderboard" in err and "file is not a database" in err
    pending = recipe.run_dir / "leaderboard_pending"
    assert len(list(pending.glob("*.json"))) >= 3  # each member, the blends, the submission
    db.unlink()  # the database moved aside, as the warning says
    assert main(["submit", str(recipe.run_dir)]) == 0
    rows = query(str(db))
    assert {"tiny:submission"} <= set(rows["name"]) and len(rows[rows["kind"] == "member"]) == 2
    assert not pending.exists()
    with sqlite3.connect(db) as conn:  # recorded once each, never twice
        assert conn.execute("select count(*) from kit_leaderboard").fetchone()[0] == len(rows)
