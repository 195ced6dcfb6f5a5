#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests marked `postgres` (tests/test_tune_postgres.py):
#
#     eval "$(.ci/postgres.sh)"      # prints one line: export KIT_TEST_POSTGRES_URL=postgresql+psycopg2://...
#     .ci/postgres.sh stop           # stop it (the data dir stays; remove it to start from scratch)
#
# Installs postgresql with apt-get only if no server binaries are found, runs the server as the `postgres` user
# (required when this script runs as root; as another user it runs as that user) on 127.0.0.1 only, with its data
# in $KIT_PG_DIR (default /tmp/kit-postgres), port $KIT_PG_PORT (default 54329), trust authentication (nothing but
# this machine can connect, and the data is disposable), and creates the database kit_test. Running it again
# reuses the running server. Everything but the export line goes to stderr, so `eval "$(...)"` works; when
# PostgreSQL cannot be installed or started it says why and exits 0 without the export: the tests then skip.
set -u
PGDIR=${KIT_PG_DIR:-/tmp/kit-postgres}
PORT=${KIT_PG_PORT:-54329}
DB=kit_test
DATA=$PGDIR/data
LOG=$PGDIR/server.log

say() { echo "postgres.sh: $*" >&2; }
give_up() { say "$*; tests marked postgres will be skipped"; exit 0; }

find_bin() {  # the newest installed server's bin dir (Debian keeps them in /usr/lib/postgresql/<major>/bin)
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    return 1
}

BIN=$(find_bin)
if [ -z "$BIN" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        give_up "no PostgreSQL server found, and apt-get cannot install one here (needs root and apt-get)"
    fi
    say "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends postgresql >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql >&2; } \
        || give_up "apt-get install postgresql failed"
    BIN=$(find_bin) || give_up "postgresql installed, but no initdb/pg_ctl found under /usr/lib/postgresql"
fi

if [ "$(id -u)" -eq 0 ]; then  # the server refuses to run as root
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PGDIR" --shell /bin/sh postgres \
        || give_up "no postgres user, and useradd failed"
    if command -v runuser >/dev/null; then as_pg() { runuser -u postgres -- "$@"; }
    else as_pg() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }
    fi
    SUPERUSER=postgres
else
    as_pg() { "$@"; }
    SUPERUSER=$(id -un)
fi

if [ "${1:-}" = stop ]; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || say "not running"
    exit 0
fi

mkdir -p "$PGDIR" || give_up "cannot create $PGDIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$PGDIR"
chmod 700 "$PGDIR"
if [ ! -s "$DATA/PG_VERSION" ]; then
    say "initdb in $DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust -E UTF8 --no-instructions >"$PGDIR/initdb.log" 2>&1 \
        || give_up "initdb failed: $(tail -3 "$PGDIR/initdb.log")"
fi
if as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    say "server already running ($DATA)"
else
    # Socket in the data dir: /var/run/postgresql may not exist or belong to another server.
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=100 -c fsync=off" >&2 \
        || give_up "the server did not start (port $PORT in use? set KIT_PG_PORT): $(tail -3 "$LOG" 2>/dev/null)"
fi
PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" -d postgres -v ON_ERROR_STOP=1 -tAq)
for _ in $(seq 30); do "${PSQL[@]}" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" 2>/dev/null)" != 1 ]; then
    "${PSQL[@]}" -c "CREATE DATABASE $DB" >&2 || give_up "cannot create database $DB on 127.0.0.1:$PORT"
fi
say "PostgreSQL on 127.0.0.1:$PORT, database $DB, data in $DATA (stop: $0 stop)"
echo "export KIT_TEST_POSTGRES_URL=postgresql+psycopg2://$SUPERUSER@127.0.0.1:$PORT/$DB"
