#!/usr/bin/env bash
# pg-cluster.sh — owns a throwaway PostgreSQL 15 cluster for tests: initdb into
# DIR/data, listen on 127.0.0.1 only (free port), unix socket in DIR, database
# `provisioner`, log in DIR/postgres.log.
#
# Usage:   scripts/pg-cluster.sh start  DIR   prints postgres://postgres@127.0.0.1:PORT/provisioner
#                                             as last stdout line (also written to DIR/url)
#          scripts/pg-cluster.sh stop   DIR   pg_ctl stop -m fast; ok if not running
#          scripts/pg-cluster.sh status DIR   exit 0 if running
# Env:     PG_BIN  PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# When run as root, the server runs as the `postgres` user: DIR is chowned to
# it and every parent directory of DIR must be traversable (o+x) by it. /tmp
# and the repo under /work work; a DIR under /root does not. When run as an
# ordinary user, the server runs as that user. `start` on a running cluster
# just prints its URL; on a stopped one it restarts it with its data.
# Settings are for tests only (fsync=off, trust auth).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
cmd="$1"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
[[ -x "$PG_BIN/pg_ctl" ]] || { echo "pg-cluster: no pg_ctl in $PG_BIN (set PG_BIN)" >&2; exit 1; }

if [[ "$cmd" != start && ! -d "$2" ]]; then
    [[ "$cmd" == stop ]] && { echo "pg-cluster: not running ($2 does not exist)" >&2; exit 0; }
    echo "pg-cluster: not running ($2 does not exist)" >&2; exit 1
fi
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
data="$dir/data"

# Run a command as the cluster owner, from a directory it can read.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

is_running() {
    [[ -f "$data/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

port_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

url_for() { echo "postgres://postgres@127.0.0.1:$1/provisioner"; }

do_start() {
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || { echo "pg-cluster: no 'postgres' user" >&2; exit 1; }
        chown postgres:postgres "$dir"
        chmod 700 "$dir"
        if ! runuser -u postgres -- test -w "$dir" -a -x "$dir"; then
            echo "pg-cluster: user postgres cannot reach $dir: a parent directory is not" \
                 "traversable (o+x). Use a DIR under /tmp or under the repo." >&2
            exit 1
        fi
    fi

    if is_running; then
        cat "$dir/url"
        return 0
    fi

    # Unix socket path: DIR/.s.PGSQL.PORT must fit in sun_path (107 bytes).
    if (( ${#dir} + 17 > 107 )); then
        echo "pg-cluster: path $dir is too long for a unix socket; use a shorter DIR (e.g. under /tmp)" >&2
        exit 1
    fi

    if [[ ! -f "$data/PG_VERSION" ]]; then
        rm -rf "$data"
        as_pg "$PG_BIN/initdb" -D "$data" --auth=trust -U postgres --encoding=UTF8 \
            --locale=C --no-sync >"$dir/initdb.log" 2>&1 || {
            echo "pg-cluster: initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 1; }
        echo "include_if_exists = 'provisioner.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi

    local port="" attempt
    [[ -f "$dir/port" ]] && port="$(cat "$dir/port")"
    for attempt in 1 2 3; do
        if [[ ! "$port" =~ ^[0-9]+$ ]] || ! port_free "$port"; then
            port="$(free_port)"
        fi
        as_pg tee "$data/provisioner.conf" >/dev/null <<EOF
# Written by scripts/pg-cluster.sh on every start; test settings only.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
EOF
        if as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start >/dev/null; then
            break
        fi
        if (( attempt == 3 )); then
            echo "pg-cluster: could not start PostgreSQL; tail of $dir/postgres.log:" >&2
            tail -n 30 "$dir/postgres.log" >&2 || true
            exit 1
        fi
        port=""   # probably lost a race for the port: pick another one
    done
    echo "$port" >"$dir/port"

    local exists
    exists="$(as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XtAq \
        -c "SELECT 1 FROM pg_database WHERE datname = 'provisioner'")"
    if [[ "$exists" != 1 ]]; then
        as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres provisioner
    fi

    url_for "$port" >"$dir/url"
    url_for "$port"
}

do_stop() {
    if ! is_running; then
        echo "pg-cluster: not running ($dir)" >&2
        return 0
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    echo "pg-cluster: stopped ($dir)" >&2
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status)
        if is_running; then cat "$dir/url"; else echo "pg-cluster: not running ($dir)" >&2; exit 1; fi
        ;;
    *) usage ;;
esac
