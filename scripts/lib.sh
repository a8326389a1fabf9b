# lib.sh — what the scripts share. A script sources it with
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# and calls start_synapse from the repository's root.

# free_port: prints a TCP port that is free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# scratch_dir PREFIX: sets `work` to a new directory under /tmp (where the
# postgres user can reach it when we run as root), to be removed on exit with
# the Synapse and PostgreSQL started in it ($work/synapse, $work/pg): a script
# with more to stop calls stop_scratch from its own EXIT trap.
scratch_dir() {
    work="$(mktemp -d "/tmp/$1.XXXXXX")"
    chmod 755 "$work"
    trap stop_scratch EXIT
}

stop_scratch() {
    scripts/synapse-ctl.sh stop "$work/synapse" >/dev/null 2>&1 || true
    # The last run's Synapse log stays for a look after a failure.
    mkdir -p .cache && cp "$work/synapse/homeserver.log" .cache/last-synapse.log 2>/dev/null || true
    scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}

# start_synapse DIR: writes a throwaway Synapse's configuration into DIR (from
# SERVER_NAME, REGISTRATION_SECRET and the other settings synapse-config.sh
# reads from the environment), starts it on a free port of 127.0.0.1 and
# prints that port. Stop it with `scripts/synapse-ctl.sh stop DIR`.
start_synapse() {
    # Chained: `set -e` does not reach into a command substitution.
    local port
    port="$(free_port)" &&
        scripts/synapse-config.sh "$1" "$port" >/dev/null &&
        scripts/synapse-ctl.sh start "$1" >/dev/null &&
        echo "$port"
}

# fixed_port: prints a TCP port free on 127.0.0.1 right now, from below the
# kernel's ephemeral range, so that no socket bound to port 0 (every test
# service) can take it before the one it is meant for binds it.
fixed_port() {
    python3 -c '
import random, socket
low = 20000
high = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 1
while True:
    port = random.randint(low, high)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    s.close()
    print(port)
    break
'
}
