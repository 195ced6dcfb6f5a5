"""Database URLs (the leaderboard's, a study's storage) and their passwords: a password is used to connect and is
never written to a file or printed.

    url = without_password("postgresql://kit:s3cret@db/kit")   # 'postgresql://kit@db/kit'; s3cret kept in memory
    engine = create_engine(with_password(url))                  # the password merged back only to connect
    print(mask(message))                                        # any password this process knows shows as ***

Where a password comes from, first found: the URL as given to this process (a recipe's `leaderboard:` or
`search.storage:`, `kit tune --storage`, `--url`, $KIT_LEADERBOARD_URL), $KIT_DB_PASSWORD, and for PostgreSQL the
driver's own $PGPASSWORD or ~/.pgpass. Recipes, plans, leaderboard rows and bundles keep the URL without it, so a
later command on the same run (another process) needs $KIT_DB_PASSWORD or $PGPASSWORD.
"""
from __future__ import annotations

import os
import re

PASSWORD_ENV = "KIT_DB_PASSWORD"
_QUERY_PASSWORDS = ("password", "passwd")  # a password given as a query parameter (psycopg2, pymysql read them)
_MASK = "***"
# URL without its password -> the password given with it in this process: the one place a password lives
_given: dict[str, str] = {}


def _parse(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ValueError(f"{mask(url)} is not a database URL ({_reason(e)}); write "
                         f"dialect[+driver]://user@host[:port]/database, e.g. postgresql://kit@db.example.org/kit, "
                         f"or a path for a SQLite file") from None


def _reason(e: Exception) -> str:
    text = str(e)
    if "invalid literal for int()" in text:
        return "its port is not a number"
    return mask(text.split("\n")[0][:120])


def without_password(url: str | None) -> str | None:
    """`url` with its password (user:PASSWORD@ or ?password=) removed and remembered for with_password; a URL
    without one, or a plain path, comes back as it is. A ValueError for a URL that cannot be parsed."""
    if url is None or "://" not in url:
        return url
    u = _parse(url)
    secret = u.password
    query = {k: v for k, v in u.query.items() if k.lower() not in _QUERY_PASSWORDS}
    if secret is None:
        found = [v for k, v in u.query.items() if k.lower() in _QUERY_PASSWORDS]
        secret = (found[0] if isinstance(found[0], str) else found[0][0]) if found else None
    if secret is None and len(query) == len(u.query):
        return url
    from sqlalchemy.engine import URL
    bare = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, query)
    bare = bare.render_as_string(hide_password=False)
    if secret:
        _given[bare] = str(secret)
    return bare


def with_password(url: str) -> str:
    """The URL to connect with: its password as given in this process, else $KIT_DB_PASSWORD, else none (the
    driver may read its own, PostgreSQL's $PGPASSWORD or ~/.pgpass). Never print or store what this returns."""
    if "://" not in url:
        return url
    bare = without_password(url)
    secret = _given.get(bare) or os.environ.get(PASSWORD_ENV)
    if not secret:
        return bare
    u = _parse(bare)
    return u.set(password=secret).render_as_string(hide_password=False)


def connect_url(url: str) -> str:
    """with_password(url), and a bare postgresql:// given the driver that is installed: SQLAlchemy 2.1 reads it as
    psycopg (3), kit's [postgres] extra installs psycopg2. A ValueError (masked) when neither is installed."""
    import importlib.util
    full = with_password(url)
    if "://" not in full or not full.startswith("postgresql://"):
        return full
    if importlib.util.find_spec("psycopg") is not None:
        return full
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + full[len("postgresql://"):]
    raise ValueError(f"{mask(url)} needs a PostgreSQL driver, and none is installed: pip install 'kit[postgres]' "
                     f"(psycopg2) or pip install psycopg")


def mask(text) -> str:
    """`text` with every password this process knows (given in a URL, or in $KIT_DB_PASSWORD / $PGPASSWORD)
    replaced by ***, and any user:password@ left in a URL too."""
    text = str(text)
    secrets = set(_given.values()) | {os.environ.get(k) for k in (PASSWORD_ENV, "PGPASSWORD")}
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        # as a whole token: a password "PASS" leaves the word $KIT_DB_PASSWORD in a message alone
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", _MASK, text)
    text = re.sub(r"(://[^/\s:@]*:)[^@\s/]+@", rf"\1{_MASK}@", text)
    return re.sub(rf"([?&](?:{'|'.join(_QUERY_PASSWORDS)})=)[^&\s]+", rf"\1{_MASK}", text, flags=re.I)
