# Throwaway PostgreSQL cluster on loopback for tests and benchmarks.
# Source this file, then: pg_start (exports SYNCFLOW_TEST_DATABASE_URL), pg_stop.
# Installs Debian's `postgresql` package if no server binaries are found.

pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

pg_install() {
    pg_bindir >/dev/null && return 0
    echo "installing PostgreSQL (Debian package postgresql)…" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    pg_bindir >/dev/null || { echo "PostgreSQL install failed" >&2; return 1; }
}

# Picks a free TCP port on loopback.
pg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_start() {
    pg_install || return 1
    local bin; bin=$(pg_bindir)
    id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/sh postgres
    PG_DIR=$(mktemp -d /tmp/syncflow-pg.XXXXXX)
    chown postgres "$PG_DIR"
    PG_PORT=$(pg_free_port)
    runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # Tests trade durability for speed; PG_DURABLE=1 (benchmarks) keeps the defaults.
    local speed="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [ "${PG_DURABLE:-0}" = 1 ] && speed="-c shared_buffers=256MB"
    runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c wal_level=logical -c max_connections=400 $speed" >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    export PG_DIR PG_PORT
    export SYNCFLOW_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "PostgreSQL test cluster on 127.0.0.1:$PG_PORT ($PG_DIR)" >&2
}

pg_stop() {
    [ -n "${PG_DIR:-}" ] || return 0
    local bin; bin=$(pg_bindir)
    runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
    unset PG_DIR
}
