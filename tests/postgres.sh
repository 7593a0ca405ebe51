#!/usr/bin/env bash
# Install PostgreSQL from Debian's packages (if missing), start a throwaway cluster on 127.0.0.1 and
# print its URL on stdout (the only thing printed there), for the multi-worker storage tests:
#
#   export ARCHSCALE_TEST_POSTGRES_URL="$(bash tests/postgres.sh)"
#
# Idempotent: a second call finds the running cluster and prints the same URL. Test-only, bound to
# 127.0.0.1: the superuser `postgres` is trusted, every other role must give its password (SCRAM),
# so the credential tests really authenticate. Settings: ARCHSCALE_PG_PORT (55432), ARCHSCALE_PG_DIR
# (/tmp/archscale-pg), ARCHSCALE_PG_DB (archscale_test). Stop it with: bash tests/postgres.sh stop
set -euo pipefail

PORT="${ARCHSCALE_PG_PORT:-55432}"
DIR="${ARCHSCALE_PG_DIR:-/tmp/archscale-pg}"
DB="${ARCHSCALE_PG_DB:-archscale_test}"
URL="postgresql://postgres@127.0.0.1:${PORT}/${DB}"

log() { echo "postgres.sh: $*" >&2; }

bindir() {
    local version
    version="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$version" && -x "/usr/lib/postgresql/${version}/bin/initdb" ]] || return 1
    echo "/usr/lib/postgresql/${version}/bin"
}

# The server refuses to run as root: as root, run its tools as the `postgres` user the package made.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if ! BIN="$(bindir)"; then
    log "installing postgresql from Debian's packages"
    SUDO=""
    [[ "$(id -u)" == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN="$(bindir)"
fi

if [[ "${1:-}" == "stop" ]]; then
    as_owner "$BIN/pg_ctl" -D "$DIR" -m fast stop >&2 || true
    exit 0
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [[ ! -f "$DIR/PG_VERSION" ]]; then
        log "initializing a cluster in $DIR"
        mkdir -p "$DIR"
        [[ "$(id -u)" != 0 ]] || chown postgres:postgres "$DIR"
        as_owner "$BIN/initdb" -D "$DIR" -U postgres -A trust -E UTF8 >&2
    fi
    printf '%s\n' "local all all trust" "host all postgres 127.0.0.1/32 trust" \
        "host all all 127.0.0.1/32 scram-sha-256" | as_owner tee "$DIR/pg_hba.conf" >/dev/null
    log "starting the server on 127.0.0.1:$PORT"
    # Unix socket in the data directory: /var/run/postgresql may not exist in a container.
    as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PORT -k $DIR -c max_connections=200 -c fsync=off" start >&2
fi

exists="$("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'")"
[[ "$exists" == 1 ]] || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB" >&2

echo "$URL"
