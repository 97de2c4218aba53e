#!/usr/bin/env bash
# Stop exactly what cluster/up.sh started: each recorded process group (Ray workers, then the
# head, then MLflow) with SIGTERM, SIGKILL after 20 s, and PostgreSQL with `pg_ctl stop`.
# A recorded PID is signalled only while it is still the process up.sh started: same start time
# (/proc/PID/stat) and a command line that names this cluster's directory (cluster/pids.sh).
# Never `ray stop` (it would stop every Ray on the machine). Data stays in $STATE unless --purge.
set -uo pipefail
umask 077
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SLIMRAY_CLUSTER_DIR:-$ROOT/.cluster}
PURGE=0
[[ ${1:-} == --purge ]] && PURGE=1
[[ -d $STATE ]] || { echo "down.sh: nothing to stop ($STATE does not exist)"; exit 0; }
PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /usr/lib/postgresql/15/bin/pg_ctl)")
if [[ $(id -u) == 0 ]]; then PGRUN=(runuser -u postgres --); else PGRUN=(); fi
# shellcheck source=cluster/pids.sh
source "$ROOT/cluster/pids.sh"

stop_group() {  # pid file: the PID leads its own process group (setsid in up.sh)
    local f=$1 pid
    pid=$(recorded_pid "$f" 2>/dev/null) || { rm -f "$f"; return 0; }
    if same_process "$f"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null
        echo "stopped $(basename "$f") (process group $pid)"
    elif kill -0 "$pid" 2>/dev/null; then
        echo "down.sh: PID $pid is no longer $(basename "$f") (another start time or command); not signalled" >&2
    fi
    rm -f "$f"
}
for f in "$STATE"/pids/ray-worker-*; do [[ -e $f ]] && stop_group "$f"; done
[[ -e $STATE/pids/ray-head ]] && stop_group "$STATE/pids/ray-head"
[[ -e $STATE/pids/mlflow ]] && stop_group "$STATE/pids/mlflow"
if [[ -f $STATE/postgres/data/postmaster.pid ]]; then  # pg_ctl checks its own postmaster.pid
    "${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$STATE/postgres/data" -m fast -w stop >/dev/null && echo "stopped postgres"
fi
rm -f "$STATE/pids/postgres" "$STATE/env"
RAY_TMP=$(cat "$STATE/ray_tmp" 2>/dev/null)
if [[ $PURGE == 1 ]]; then
    [[ -n $RAY_TMP && $RAY_TMP == /tmp/slimray-ray.* ]] && rm -rf "$RAY_TMP"
    rm -rf "$STATE"
    echo "removed $STATE"
fi
exit 0
