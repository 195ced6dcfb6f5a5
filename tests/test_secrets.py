"""kit.dburl: a database password is used to connect and never written to a file or printed.

A recipe names a study storage and a leaderboard with passwords; the run, its leaderboard rows (kept in the run
while the server is down), its export (folder and zip) and everything printed are searched for them: absent.
`kit tune --storage URL` with a password says why it cannot connect without showing it; malformed URLs and URLs
without their driver are one line (exit 2). The password may come from $KIT_DB_PASSWORD instead (README)."""
from __future__ import annotations

import zipfile

import pytest
import yaml

from kit.cli import main
from kit.dburl import PASSWORD_ENV, connect_url, mask, with_password, without_password
from test_inference import make_kaggle

STORAGE_PW, BOARD_PW = "Stor4gePassw0rd", "B0ardPassw0rd"
DOWN = "127.0.0.1:1"  # nothing listens on port 1: PostgreSQL's connection is refused at once


def _recipe(tmp_path, root, **extra) -> dict:
    return {"name": "secret", "output_dir": str(tmp_path / "runs"),
            "data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg", "num_workers": 0},
            "augment": {"input_size": 32, "crop_pct": 1.0},
            "model": {"backbone": "test_resnet", "weights": "none", "strategy": "full", "channels_last": False,
                      "depthwise_taps": False},
            "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0},
            "ensemble": {"seeds": [0, 1]}, **extra}


def _files_holding(secret: str, *paths) -> list[str]:
    """Every file under `paths` (and the members of any zip) whose bytes hold `secret`."""
    found = []
    for base in paths:
        for p in [base] if base.is_file() else [q for q in base.rglob("*") if q.is_file()]:
            data = p.read_bytes()
            if secret.encode() in data:
                found.append(str(p))
            if zipfile.is_zipfile(p):
                with zipfile.ZipFile(p) as z:
                    found += [f"{p}:{n}" for n in z.namelist() if secret.encode() in z.read(n)]
    return found


def test_passwords_in_a_recipe_reach_no_file_and_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_kaggle(tmp_path / "kaggle")
    recipe = tmp_path / "secret.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(
        tmp_path, root, leaderboard=f"postgresql://kit:{BOARD_PW}@{DOWN}/board",
        search={"storage": f"postgresql://kit:{STORAGE_PW}@{DOWN}/studies"})))
    assert main(["plan", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0  # the leaderboard is down: its rows wait in the run (one-line warning)
    run_dir = tmp_path / "runs" / "secret"
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["search"]["storage"] == f"postgresql://kit@{DOWN}/studies"
    assert saved["leaderboard"] == f"postgresql://kit@{DOWN}/board"
    assert list((run_dir / "leaderboard_pending").glob("*.json"))
    assert main(["export", str(run_dir), str(tmp_path / "bundle")]) == 0
    assert main(["export", str(run_dir), str(tmp_path / "bundle"), "--zip"]) == 0
    bundle_plan = (tmp_path / "bundle" / "plan.json").read_text()
    assert "postgresql" not in bundle_plan  # a bundle names no database at all
    out = capsys.readouterr()
    assert "warning: cannot write to the leaderboard" in out.err and "Traceback" not in out.err
    for secret in (STORAGE_PW, BOARD_PW):
        assert secret not in out.out + out.err
        assert _files_holding(secret, run_dir, tmp_path / "bundle", tmp_path / "bundle.zip") == []


def test_rows_kept_in_the_run_land_without_the_password_once_the_leaderboard_works(tmp_path, monkeypatch):
    """The same recipe with a SQLite leaderboard (a SQLite URL holds no password): every row's recipe column, the
    database file and the run directory hold no trace of the storage's password."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_kaggle(tmp_path / "kaggle")
    recipe = tmp_path / "secret.yaml"
    board = tmp_path / "lb.sqlite"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, root, leaderboard=f"sqlite:///{board}",
                                             search={"storage": f"postgresql://kit:{STORAGE_PW}@{DOWN}/s"})))
    assert main(["run", str(recipe)]) == 0
    from kit.leaderboard import query
    rows = query(f"sqlite:///{board}")
    assert len(rows) >= 3 and all(r["search"]["storage"] == f"postgresql://kit@{DOWN}/s" for r in rows["recipe"])
    assert _files_holding(STORAGE_PW, tmp_path / "runs", board) == []


def test_tune_storage_password_is_never_printed(tmp_path, capsys):
    root = make_kaggle(tmp_path / "kaggle")
    recipe = tmp_path / "t.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(
        tmp_path, root, search={"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})))
    assert main(["tune", str(recipe), "--storage", f"postgresql://u:{STORAGE_PW}@{DOWN}/db"]) == 2
    err = capsys.readouterr().err
    assert STORAGE_PW not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"cannot open the study storage postgresql://u@{DOWN}/db" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("url, expected", [
    (f"postgresql://u:{STORAGE_PW}@h:port/db", "its port is not a number"),
    (f"postgresql+nosuchdriver://u:{STORAGE_PW}@h/db", "nosuchdriver"),
    (f"nosuchdb://u:{STORAGE_PW}@h/db", "nosuchdb"),
    (f"postgresql+pg8000://u:{STORAGE_PW}@{DOWN}/db", "pg8000"),  # a dialect whose driver is not installed
    (f"postgresql://u:{STORAGE_PW}@{DOWN}/db", "connection"),
])
@pytest.mark.parametrize("command", ["leaderboard", "tune"])
def test_bad_or_unreachable_database_urls_are_one_line(tmp_path, capsys, url, expected, command):
    if command == "leaderboard":
        args = ["leaderboard", "--url", url]
    else:
        root = make_kaggle(tmp_path / "kaggle")
        recipe = tmp_path / "t.yaml"
        recipe.write_text(yaml.safe_dump(_recipe(
            tmp_path, root, search={"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})))
        args = ["tune", str(recipe), "--storage", url]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and expected in err and STORAGE_PW not in err and "Traceback" not in err


def test_a_malformed_url_in_a_recipe_names_the_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: digits}}\nsearch: {{storage: 'postgresql://u:{STORAGE_PW}@h:x/db'}}\n")
    assert main(["plan", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "recipe key 'search.storage'" in err and "its port is not a number" in err and STORAGE_PW not in err


def test_the_password_is_merged_only_to_connect(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    bare = without_password(f"postgresql://kit:{STORAGE_PW}@db:5432/kit?sslmode=require")
    assert bare == "postgresql://kit@db:5432/kit?sslmode=require"
    assert with_password(bare) == f"postgresql://kit:{STORAGE_PW}@db:5432/kit?sslmode=require"
    assert without_password(f"mysql://kit@db/kit?password={BOARD_PW}") == "mysql://kit@db/kit"
    assert mask(f"failed: mysql://kit:{BOARD_PW}@db/kit") == "failed: mysql://kit:***@db/kit"
    assert without_password("leaderboard/lb.sqlite") == "leaderboard/lb.sqlite"  # a path: as it is


def test_the_password_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "fr0mTheEnv")
    assert with_password("postgresql://kit@elsewhere/kit") == "postgresql://kit:fr0mTheEnv@elsewhere/kit"
    assert connect_url("postgresql://kit@elsewhere/kit").endswith("kit:fr0mTheEnv@elsewhere/kit")
    assert mask("the server said fr0mTheEnv is wrong") == "the server said *** is wrong"
