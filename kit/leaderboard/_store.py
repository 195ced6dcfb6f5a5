"""The store: one table of results, each row with what produced it. SQLAlchemy Core, so any URL works."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import (Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, delete,
                        inspect, insert, select)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError

from kit.errors import LeaderboardError
from kit.metrics import get_metric
from kit.recipe import NOT_CONFIG_KEYS, drop_keys

KINDS = ("member", "tta", "ensemble", "trial", "submission", "suite")  # suite: a cell of kit bench
# What identifies one result: recording an entry with the same values replaces the earlier row.
RECORD_KEY = ("kind", "name", "run_dir", "recipe_name", "tta_mode", "blend_method", "seed")
# An ensemble row is one per blending method (its name) and a submission row one per run: the TTA modes and the
# blend they carry are choices a later `kit predict --tta` or `kit submit` changes, not what the row is
CHOICE_FIELDS = {"ensemble": ("tta_mode", "blend_method"), "submission": ("tta_mode", "blend_method")}


def record_key(kind: str) -> tuple:
    """The fields that identify a row of this kind: recording one with the same values replaces it."""
    return tuple(k for k in RECORD_KEY if k not in CHOICE_FIELDS.get(kind, ()))
URL_ENV = "KIT_LEADERBOARD_URL"
DEFAULT_PATH = Path("leaderboard") / "leaderboard.sqlite"  # under the current working directory
_JSON_FIELDS = ("recipe", "scores", "versions", "extra")
# Keys of Entry.extra that are part of a configuration: the fold a member saw, a trial's hyperparameters, the size
# of an ensemble.
_EXTRA_CONFIG_KEYS = ("fold", "params", "n_members", "ensemble_size", "round")  # round: of pseudo-labels


@dataclass(kw_only=True)
class Entry:
    """One result. `score` is the primary (validation / out-of-fold) value of `metric`; `scores` holds every metric.

    Conventions read by the plots: a "tta" entry is named after its member and carries `tta_mode` ("none" for
    the plain prediction); an "ensemble" entry may carry its size in extra["n_members"] (or "ensemble_size");
    a "trial" entry may carry extra["trial"] (Optuna's trial number) and extra["params"]. These and extra["fold"],
    when set, are part of config_key.
    """
    kind: str
    name: str
    metric: str
    score: float | None
    recipe_name: str | None = None
    recipe_hash: str | None = None
    recipe: dict | None = None  # the resolved recipe
    backbone: str | None = None
    strategy: str | None = None
    seed: int | None = None
    fold_scheme: str | None = None  # "holdout", "kfold5", ...
    tta_mode: str | None = None
    blend_method: str | None = None
    scores: dict = field(default_factory=dict)
    public_score: float | None = None
    private_score: float | None = None
    wall_time_s: float | None = None
    device: str | None = None
    versions: dict = field(default_factory=dict)  # environment()["versions"]
    git_commit: str | None = None
    run_dir: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    extra: dict = field(default_factory=dict)
    config_key: str | None = None  # same configuration except the seed; computed when None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Entry kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        get_metric(self.metric)  # fails early, listing the valid metric names
        for name in ("score", "public_score", "private_score", "wall_time_s"):
            setattr(self, name, _float_or_none(getattr(self, name)))
        self.seed = None if _missing(self.seed) else int(self.seed)
        if self.run_dir is not None:
            self.run_dir = str(self.run_dir)
        self.created_at = _utc(self.created_at)
        if self.config_key is None:
            self.config_key = compute_config_key(self)

    @classmethod
    def from_row(cls, row) -> "Entry":
        """An Entry from a row of query() (a mapping or a pandas Series); the row's id is dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: None if _missing(v) else v for k, v in dict(row).items() if k in names})

    def to_row(self) -> dict:
        row = asdict(self)
        for name in _JSON_FIELDS:
            row[name] = None if row[name] is None else json.dumps(row[name], default=_json_default)
        row["created_at"] = self.created_at.replace(tzinfo=None)  # stored as naive UTC: same in SQLite and PostgreSQL
        return row


def compute_config_key(entry: Entry) -> str:
    """A 16-hex-digit hash of everything that defines a configuration except its seed."""
    parts = dict(kind=entry.kind, recipe_name=entry.recipe_name, backbone=entry.backbone, strategy=entry.strategy,
                 fold_scheme=entry.fold_scheme, tta_mode=entry.tta_mode, blend_method=entry.blend_method,
                 recipe=drop_keys(entry.recipe or {}, NOT_CONFIG_KEYS), **{k: (entry.extra or {}).get(k) for k in _EXTRA_CONFIG_KEYS})
    text = json.dumps(parts, sort_keys=True, default=_json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_metadata = MetaData()
_table = Table(
    "kit_leaderboard", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("config_key", String(16), nullable=False, index=True),
    Column("recipe_name", String(255), index=True),
    Column("recipe_hash", String(64)),
    Column("recipe", Text),
    Column("backbone", String(255), index=True),
    Column("strategy", String(64)),
    Column("seed", Integer),
    Column("fold_scheme", String(32)),
    Column("tta_mode", String(32)),
    Column("blend_method", String(32)),
    Column("metric", String(32), nullable=False, index=True),
    Column("score", Float),
    Column("scores", Text),
    Column("public_score", Float),
    Column("private_score", Float),
    Column("wall_time_s", Float),
    Column("device", String(255)),
    Column("versions", Text),
    Column("git_commit", String(64)),
    Column("run_dir", Text),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("extra", Text),
)
COLUMNS = [c.name for c in _table.columns]


def resolve_url(url=None) -> str:
    """url, else $KIT_LEADERBOARD_URL, else leaderboard/leaderboard.sqlite under the cwd. A plain path means SQLite.
    The URL comes back without its password (kit.dburl keeps it to connect): safe to print and to store."""
    from kit.dburl import without_password
    url = url or os.environ.get(URL_ENV) or DEFAULT_PATH.resolve()
    url = str(url)
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        return without_password(url)
    except ValueError as e:
        raise LeaderboardError(f"leaderboard: {e}") from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite leaderboard URL (None for another database, or one in memory)."""
    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" else None


def _db_error(e: Exception, url: str, doing: str) -> LeaderboardError:
    """A LeaderboardError for a database error while `doing` (one line, the password masked)."""
    from kit.dburl import mask
    cause = getattr(e, "orig", None) or e
    text = " ".join(str(cause).split())[:200]
    path = sqlite_path(url)
    fix = (f"if {path} is damaged, move it aside (kit starts a new one) or restore it from a copy"
           if path is not None else "check that the server is up and the URL and credentials are right "
                                    "(the password comes from $KIT_DB_PASSWORD or $PGPASSWORD)")
    return LeaderboardError(mask(f"cannot {doing} the leaderboard {url} ({type(cause).__name__}: {text}); {fix}"))


def record(entries: list[Entry], url=None) -> list[int]:
    """Insert all entries in one transaction (all or none) and return their ids. Creates the table on first use.

    Idempotent: an entry replaces any earlier one with the same RECORD_KEY (the same result of the same run
    recorded again, e.g. by a second `kit submit`), so nothing is counted twice."""
    if isinstance(entries, Entry):
        entries = [entries]
    rows = [e.to_row() for e in entries]
    engine = _engine(resolve_url(url), create_dir=True)

    def attempt():
        _create_table(engine)
        with engine.begin() as conn:
            ids = []
            for row in rows:
                conn.execute(delete(_table).where(*[_table.c[k].is_not_distinct_from(row[k])
                                                    for k in record_key(row["kind"])]))
                ids.append(conn.execute(insert(_table).values(**row)).inserted_primary_key[0])
            return ids

    try:
        return _retry_when_locked(attempt)
    except SQLAlchemyError as e:
        raise _db_error(e, resolve_url(url), "write to") from None
    finally:
        engine.dispose()


def query(url=None, *, metric=None, kind=None, recipe=None, backbone=None, since=None, until=None) -> pd.DataFrame:
    """Entries as a DataFrame (one row each, id first), oldest first. kind/recipe/backbone take a name or a list;
    since/until take a datetime or an ISO string (naive means UTC); since is inclusive, until exclusive."""
    url = resolve_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return _frame([])  # don't create an empty database file just to read it
    stmt = select(_table).order_by(_table.c.id)
    for column, wanted in ((_table.c.metric, metric), (_table.c.kind, kind), (_table.c.recipe_name, recipe),
                           (_table.c.backbone, backbone)):
        if wanted is not None:
            stmt = stmt.where(column.in_([wanted] if isinstance(wanted, str) else list(wanted)))
    if since is not None:
        stmt = stmt.where(_table.c.created_at >= _utc(since).replace(tzinfo=None))
    if until is not None:
        stmt = stmt.where(_table.c.created_at < _utc(until).replace(tzinfo=None))
    engine = _engine(url)
    try:
        if not _retry_when_locked(lambda: inspect(engine).has_table(_table.name)):
            return _frame([])
        with engine.connect() as conn:
            rows = _retry_when_locked(lambda: [dict(r) for r in conn.execute(stmt).mappings()])
        return _frame(rows)
    except SQLAlchemyError as e:
        raise _db_error(e, url, "read") from None
    except (ValueError, TypeError, RecursionError) as e:  # a row whose JSON columns are not what kit writes
        raise _db_error(e, url, "read") from None
    finally:
        engine.dispose()


def environment() -> dict:
    """{"versions": {...}, "git_commit": ...}, ready to splat into Entry(...). Reads package metadata only,
    so torch & co. are not imported. git_commit ends in "-dirty" when the work tree has uncommitted changes."""
    versions = {"python": platform.python_version()}
    for package in ("kit", "numpy", "torch", "torchvision", "timm", "albumentations", "ttach", "optuna",
                    "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    if versions["kit"] is None:  # running from a checkout that was not pip-installed
        from kit.version import __version__
        versions["kit"] = __version__
    return {"versions": versions, "git_commit": _git_commit()}


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS).astype(object)
    for name in _JSON_FIELDS:
        df[name] = [None if _missing(v) else json.loads(v) for v in df[name]]
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    df["seed"] = df["seed"].astype("Int64")
    for name in ("id", "score", "public_score", "private_score", "wall_time_s"):
        df[name] = pd.to_numeric(df[name]).astype(float if name != "id" else "int64")
    return df


def _engine(url: str, create_dir: bool = False):
    """An engine for `url` (without its password: kit.dburl merges it back here, and only here); a missing
    driver or a URL SQLAlchemy cannot use is a LeaderboardError naming the URL (masked) and the fix."""
    from kit.dburl import connect_url, mask
    try:
        u = make_url(connect_url(url))  # the password, and the PostgreSQL driver installed
    except ValueError as e:
        raise LeaderboardError(f"leaderboard: {e}") from None
    try:
        if u.get_backend_name() != "sqlite":
            return create_engine(u)
        if create_dir and u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        # A writer waits up to 30 s for another process's lock instead of failing at once.
        return create_engine(u, connect_args={"timeout": 30})
    except (ImportError, ArgumentError, NoSuchModuleError) as e:
        raise LeaderboardError(mask(f"cannot open the leaderboard {url}: {type(e).__name__}: {e}; install the "
                                    f"database's driver (PostgreSQL: pip install 'kit[postgres]'), or give a "
                                    f"dialect[+driver]:// URL SQLAlchemy knows")) from None
    except OSError as e:
        raise LeaderboardError(f"cannot create the folder of the leaderboard {mask(url)} ({e.strerror or e}); "
                               f"pass another URL or path") from None


def _create_table(engine):
    try:
        _metadata.create_all(engine)
    except DBAPIError:
        # Another process created it between our check and our CREATE (PostgreSQL reports a duplicate type).
        if not inspect(engine).has_table(_table.name):
            raise


def _retry_when_locked(fn, attempts: int = 8):
    """SQLite's busy timeout covers most waits; this covers the rest (a lock taken while upgrading, a slow
    network disk) with exponential backoff: 0.1 + 0.2 + ... + 12.8 s, jittered, about 25 s in all."""
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as e:
            message = str(e.orig).lower()
            transient = "locked" in message or "busy" in message or "already exists" in message
            if not transient or i == attempts - 1:
                raise
            time.sleep(0.1 * 2 ** i * random.uniform(0.5, 1.5))


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def ensemble_size(extra) -> int | None:
    """The number of members an ensemble entry blends, from its extra dict (None when not recorded)."""
    if not isinstance(extra, dict):
        return None
    size = next((extra[k] for k in ("n_members", "ensemble_size", "size") if extra.get(k) is not None), None)
    return None if size is None else int(size)


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot store a {type(value).__name__} in the leaderboard as JSON: {value!r}")


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an ISO date string, got {value!r}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _float_or_none(value):
    return None if _missing(value) else float(value)


def _missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)
