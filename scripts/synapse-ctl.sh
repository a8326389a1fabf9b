#!/usr/bin/env bash
# synapse-ctl.sh — owns the life cycle of a throwaway local Synapse whose config
# was written by synapse-config.sh into DIR.
#
# Usage:   scripts/synapse-ctl.sh start  DIR   start in the background, wait for /health,
#                                              print http://127.0.0.1:PORT as last line
#          scripts/synapse-ctl.sh wait   DIR   wait until /health answers OK
#          scripts/synapse-ctl.sh status DIR   exit 0 if running and healthy
#          scripts/synapse-ctl.sh stop   DIR   SIGTERM, SIGKILL after 15 s; ok if not running
# Files:   DIR/synapse.pid (pid), DIR/synapse.out (stdout+stderr),
#          DIR/homeserver.log (Synapse's own log)
# Env:     SYNAPSE_WAIT_TIMEOUT  seconds for start/wait (default 60)
#          MP_CACHE              passed on to synapse-venv.sh
set -euo pipefail

usage() { echo "usage: $0 start|stop|wait|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
cmd="$1"
[[ -d "$2" ]] || { echo "synapse-ctl: no such directory: $2" >&2; exit 2; }
dir="$(cd "$2" && pwd)"
config="$dir/homeserver.yaml"
pidfile="$dir/synapse.pid"
timeout="${SYNAPSE_WAIT_TIMEOUT:-60}"

scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv() { "$scripts/synapse-venv.sh" | tail -n 1; }

# pid from DIR/synapse.pid if that process is alive (not a zombie) and is the
# Synapse of this DIR; empty otherwise.
running_pid() {
    local pid state
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    [[ -r "/proc/$pid/stat" ]] || return 0
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 0
    [[ "$state" != Z && "$state" != X && -n "$state" ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "synapse.app.homeserver -c $config" || return 0
    echo "$pid"
}

port_of_config() {
    "$1" - "$config" <<'EOF'
import sys, yaml
with open(sys.argv[1], encoding="utf8") as f:
    print(yaml.safe_load(f)["listeners"][0]["port"])
EOF
}

# wait_health PYTHON PORT PID TIMEOUT -> 0 healthy, 1 timeout, 3 process exited
wait_health() {
    "$1" - "$2" "$3" "$4" <<'EOF'
import sys, time, urllib.request
port, pid, timeout = int(sys.argv[1]), int(sys.argv[2] or 0), float(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy
deadline = time.monotonic() + timeout

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")

while True:
    if pid and not alive(pid):
        sys.exit(3)
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            if r.status == 200 and r.read().strip() == b"OK":
                sys.exit(0)
    except Exception:
        pass
    if time.monotonic() >= deadline:
        sys.exit(1)
    time.sleep(0.2)
EOF
}

port_in_use() {
    "$1" - "$2" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

show_logs() {
    echo "---- tail of $dir/synapse.out ----" >&2
    tail -n 30 "$dir/synapse.out" >&2 2>/dev/null || true
    echo "---- tail of $dir/homeserver.log ----" >&2
    tail -n 40 "$dir/homeserver.log" >&2 2>/dev/null || true
}

do_stop() {
    local pid i
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$pidfile"
        echo "synapse-ctl: not running ($dir)" >&2
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [[ -n "$(running_pid)" ]] || break
        sleep 0.1
    done
    if [[ -n "$(running_pid)" ]]; then
        echo "synapse-ctl: pid $pid still alive after 15 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            [[ -n "$(running_pid)" ]] || break
            sleep 0.1
        done
    fi
    if [[ -n "$(running_pid)" ]]; then
        echo "synapse-ctl: could not stop pid $pid" >&2
        return 1
    fi
    rm -f "$pidfile"
    echo "synapse-ctl: stopped pid $pid ($dir)" >&2
}

do_wait() {
    local py="$1" pid="$2" port rc=0
    port="$(port_of_config "$py")"
    wait_health "$py" "$port" "$pid" "$timeout" || rc=$?
    case "$rc" in
        0) return 0 ;;
        3) echo "synapse-ctl: Synapse (pid $pid) exited during start-up" >&2 ;;
        *) echo "synapse-ctl: Synapse on 127.0.0.1:$port not healthy after ${timeout} s" >&2 ;;
    esac
    show_logs
    return 1
}

case "$cmd" in
    start)
        [[ -f "$config" ]] || { echo "synapse-ctl: $config missing (run synapse-config.sh first)" >&2; exit 1; }
        pid="$(running_pid)"
        if [[ -n "$pid" ]]; then
            echo "synapse-ctl: already running as pid $pid ($dir); stop it first" >&2
            exit 1
        fi
        py="$(venv)/bin/python"
        port="$(port_of_config "$py")"
        if port_in_use "$py" "$port"; then
            echo "synapse-ctl: 127.0.0.1:$port is already in use" >&2
            exit 1
        fi
        # Everything is redirected so that a caller reading our stdout/stderr
        # through a pipe is not kept waiting by the background process.
        cd "$dir"
        "$py" -m synapse.app.homeserver -c "$config" </dev/null >"$dir/synapse.out" 2>&1 &
        pid=$!
        echo "$pid" >"$pidfile"
        if ! do_wait "$py" "$pid"; then
            do_stop || true
            exit 1
        fi
        echo "synapse-ctl: started pid $pid ($dir)" >&2
        echo "http://127.0.0.1:$port"
        ;;
    wait)
        py="$(venv)/bin/python"
        do_wait "$py" "$(running_pid)"
        ;;
    status)
        pid="$(running_pid)"
        [[ -n "$pid" ]] || { echo "synapse-ctl: not running ($dir)" >&2; exit 1; }
        py="$(venv)/bin/python"
        timeout=0 do_wait "$py" "$pid" >/dev/null 2>&1 || { echo "synapse-ctl: pid $pid running but not healthy" >&2; exit 1; }
        echo "synapse-ctl: running as pid $pid ($dir)" >&2
        ;;
    stop)
        do_stop
        ;;
    *)
        usage
        ;;
esac
