#!/usr/bin/env bash
# A local multi-node cluster in one command, everything on 127.0.0.1:
#   PostgreSQL (own data directory, password auth)  ->  MLflow tracking server on it, proxied
#   artifacts  ->  token-authenticated Ray head  ->  N Ray worker nodes (own CPUs, custom resource).
# Waits until each answers, prints the addresses and writes them as `export` lines to
# $STATE/env (default .cluster/env) for `source`. Stop everything with cluster/down.sh.
#
#   cluster/up.sh [--workers N] [--worker-cpus C] [--head-cpus C] [--no-auth]
#
# MLflow runs with basic auth and a generated admin password (--no-auth: open, with a warning).
# Every secret (PostgreSQL password, MLflow admin password, Ray token, cache signing key) is a
# 0600 file in $STATE and reaches processes through their environment or a file, never a
# command line. Idempotent: when everything recorded in $STATE is alive it only prints the
# addresses. If a start fails, what this run started is stopped again (rerun at once). Each
# component runs in its own process group, recorded in $STATE/pids/<name> with its start time;
# down.sh stops exactly those groups. Data (PostgreSQL, artifacts) stays in $STATE.
set -euo pipefail
umask 077  # before anything is written: every file up.sh (and what it starts) creates is private
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$(mkdir -p "${SLIMRAY_CLUSTER_DIR:-$ROOT/.cluster}" && cd "${SLIMRAY_CLUSTER_DIR:-$ROOT/.cluster}" && pwd)
VENV=${SLIMRAY_VENV:-$ROOT/.venv}
WORKERS=2 WORKER_CPUS=2 HEAD_CPUS=1 BASIC_AUTH=1 WORKERS_GIVEN=0  # workers hold the default pipelines' 2-CPU steps
while [[ $# -gt 0 ]]; do
    case $1 in
        --workers) WORKERS=${2:-}; WORKERS_GIVEN=1; shift 2 ;;
        --worker-cpus) WORKER_CPUS=$2; shift 2 ;;
        --head-cpus) HEAD_CPUS=$2; shift 2 ;;
        --no-auth) BASIC_AUTH=0; shift ;;
        --basic-auth) BASIC_AUTH=1; shift ;;  # the default; kept for existing instructions
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "up.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $WORKERS =~ ^[0-9]+$ ]] || { echo "up.sh: --workers must be a number of worker nodes, got '$WORKERS'" >&2; exit 2; }
[[ $BASIC_AUTH == 1 ]] || echo "up.sh: WARNING: --no-auth: MLflow accepts anyone who reaches 127.0.0.1:<port> (they can plant runs; signed cache entries are still checked)" >&2
PATH="$VENV/bin:$PATH"  # Ray jobs run with the python that `ray start` saw: the project's venv
for tool in ray mlflow python; do command -v $tool >/dev/null || { echo "up.sh: $tool not found in $VENV/bin" >&2; exit 2; }; done
PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /usr/lib/postgresql/15/bin/pg_ctl)")
[[ -x $PGBIN/pg_ctl && -x $PGBIN/initdb ]] || { echo "up.sh: PostgreSQL (initdb, pg_ctl) not found; apt-get install postgresql-15" >&2; exit 2; }
mkdir -p "$STATE/pids" "$STATE/logs"
chmod -R go-rwx "$STATE"  # state from older versions: artifacts, logs, auth database owner-only
# PostgreSQL refuses to run as root: as root its tools run as the `postgres` user, which must
# traverse (never list or read) $STATE to reach its own 0700 data directory
if [[ $(id -u) == 0 ]]; then chmod 711 "$STATE"; fi
# shellcheck source=cluster/pids.sh
source "$ROOT/cluster/pids.sh"
alive() { same_process "$STATE/pids/$1"; }
free_port() { python - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
# PostgreSQL refuses to run as root: run its tools as the `postgres` user then
if [[ $(id -u) == 0 ]]; then PGRUN=(runuser -u postgres --); else PGRUN=(); fi

# ---- already up? ----------------------------------------------------------------------------
if [[ -f $STATE/env ]]; then
    running=$(cat "$STATE/workers" 2>/dev/null || echo 0)
    expected=(postgres mlflow ray-head); for i in $(seq 1 "$running"); do expected+=("ray-worker-$i"); done
    up=0; for c in "${expected[@]}"; do alive "$c" && up=$((up + 1)); done
    if [[ $up == "${#expected[@]}" ]]; then
        if [[ $WORKERS_GIVEN == 1 && $WORKERS != "$running" ]]; then
            echo "up.sh: the cluster is up with $running worker node(s), not $WORKERS; run cluster/down.sh, then cluster/up.sh --workers $WORKERS" >&2; exit 1
        fi
        echo "Cluster already up ($up processes groups alive); addresses in $STATE/env (secrets not shown):"
        sed -E 's/^(export [A-Z_]*(TOKEN|PASSWORD)=).*/\1<hidden>/' "$STATE/env"; exit 0
    elif [[ $up -gt 0 ]]; then
        echo "up.sh: cluster partially up ($up of ${#expected[@]} alive); run cluster/down.sh first" >&2; exit 1
    fi
fi

# ---- from here on, a failure (or Ctrl-C) stops what this run started: a rerun starts clean ----
cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [[ $code != 0 ]]; then
        echo "up.sh: start failed; stopping what this run started" >&2
        SLIMRAY_CLUSTER_DIR=$STATE "$ROOT/cluster/down.sh" >&2 || true
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_group() {  # name, marker, command...: run in a new session (own process group), record it
    local name=$1 marker=$2; shift 2
    setsid nohup "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
    record_pid "$STATE/pids/$name" $! "$marker"
}
wait_for() {  # what, group, seconds, command...: fails early when the group's leader died
    local what=$1 group=$2 deadline=$((SECONDS + $3)); shift 3
    while [[ $SECONDS -lt $deadline ]]; do
        "$@" >/dev/null 2>&1 && return 0
        alive "$group" || { echo "up.sh: $what exited (see $STATE/logs/$group.log)" >&2; tail -3 "$STATE/logs/$group.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "up.sh: $what did not come up in time (logs in $STATE/logs)" >&2; exit 1
}
new_secret() {  # file, bytes: a random hex secret, written once (0600 under the umask)
    [[ -s $1 ]] || python -c "import secrets; print(secrets.token_hex($2))" > "$1"
    chmod 600 "$1"
}

# ---- PostgreSQL -----------------------------------------------------------------------------
PG=$STATE/postgres
PG_PORT=$(cat "$STATE/pg_port" 2>/dev/null || free_port); echo "$PG_PORT" > "$STATE/pg_port"
if [[ ! -f $PG/data/PG_VERSION ]]; then
    mkdir -p "$PG"; new_secret "$PG/password" 16
    [[ $(id -u) == 0 ]] && chown -R postgres "$PG"
    chmod 700 "$PG"
    "${PGRUN[@]}" "$PGBIN/initdb" -D "$PG/data" -U slimray -A scram-sha-256 --pwfile="$PG/password" >"$STATE/logs/initdb.log" 2>&1
fi
# clients (psql here, MLflow's psycopg2) read the password from a 0600 passfile (libpq's PGPASSFILE)
echo "127.0.0.1:*:*:slimray:$(cat "$PG/password")" > "$STATE/pgpass"; chmod 600 "$STATE/pgpass"
export PGPASSFILE=$STATE/pgpass
"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PG/data" -o "-k $PG -h 127.0.0.1 -p $PG_PORT -c unix_socket_permissions=0700" -l "$PG/server.log" -w start >/dev/null
record_pid "$STATE/pids/postgres" "$(head -1 "$PG/data/postmaster.pid")" "$PG/data"
psql -h 127.0.0.1 -p "$PG_PORT" -U slimray -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$PG_PORT" -U slimray -d postgres -qc "CREATE DATABASE mlflow" >/dev/null
PG_URI="postgresql+psycopg2://slimray@127.0.0.1:$PG_PORT/mlflow"  # no password: it is in PGPASSFILE

# ---- MLflow tracking server on PostgreSQL, proxied artifacts --------------------------------
MLFLOW_PORT=$(free_port)
MLFLOW_ARGS=(server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 --backend-store-uri "$PG_URI"
             --serve-artifacts --artifacts-destination "$STATE/artifacts" --default-artifact-root mlflow-artifacts:/)
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true
if [[ $BASIC_AUTH == 1 ]]; then
    new_secret "$STATE/admin_password" 16
    new_secret "$STATE/flask_secret" 24
    cat > "$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/basic_auth.db
admin_username = admin
admin_password = $(cat "$STATE/admin_password")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    MLFLOW_ARGS+=(--app-name basic-auth)
    # the server's environment only (never argv): the auth config and the session secret
    MLFLOW_AUTH_CONFIG_PATH=$STATE/basic_auth.ini MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$STATE/flask_secret")
    export MLFLOW_AUTH_CONFIG_PATH MLFLOW_FLASK_SERVER_SECRET_KEY
fi
start_group mlflow "$STATE/artifacts" "$VENV/bin/mlflow" "${MLFLOW_ARGS[@]}"
unset MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_CONFIG_PATH
wait_for "MLflow server" mlflow 120 curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
if [[ $BASIC_AUTH == 1 ]]; then  # the drivers and the Ray workers (started below) log in as admin
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat "$STATE/admin_password")
    export MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
fi
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
# the key that signs cached step outputs (pipelines.store.signing), shared by every node
new_secret "$STATE/cache.key" 32
export SLIMRAY_CACHE_KEY_FILE=$STATE/cache.key

# ---- Ray: token-authenticated head + workers ------------------------------------------------
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
new_secret "$STATE/ray_token" 16
RAY_AUTH_TOKEN=$(cat "$STATE/ray_token"); export RAY_AUTH_TOKEN
# a short private temp dir (Unix socket paths must stay under 108 bytes)
RAY_TMP=$(cat "$STATE/ray_tmp" 2>/dev/null || mktemp -d /tmp/slimray-ray.XXXXXX); echo "$RAY_TMP" > "$STATE/ray_tmp"
node_ports() {  # every port a node listens on, chosen free, so several nodes share one host
    echo --node-manager-port="$(free_port)" --object-manager-port="$(free_port)" \
         --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)" \
         --metrics-export-port="$(free_port)" --runtime-env-agent-port="$(free_port)"
}
RAY_PORT=$(free_port) DASH_PORT=$(free_port) CLIENT_PORT=$(free_port)
# shellcheck disable=SC2046
start_group ray-head "$RAY_TMP" ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
    --num-cpus="$HEAD_CPUS" --resources='{"head": 1}' --object-store-memory=200000000 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --ray-client-server-port="$CLIENT_PORT" --temp-dir="$RAY_TMP" --disable-usage-stats $(node_ports)
wait_for "Ray head" ray-head 90 ray status --address="127.0.0.1:$RAY_PORT"
nodes_up() { [[ $(ray status --address="127.0.0.1:$RAY_PORT" 2>/dev/null | grep -c ' node_') -ge $1 ]]; }
for i in $(seq 1 "$WORKERS"); do  # one at a time: a loaded machine times out nodes started together
    # each node its own temp dir: a node's runtime-env agent unpacks a job's working_dir package
    # there on first use, deleting what it finds; in a shared one it deleted the directory the
    # job's driver on the head was running in (docs/reliability.md, "Submitted jobs")
    # shellcheck disable=SC2046
    start_group "ray-worker-$i" "$RAY_TMP" ray start --block --address="127.0.0.1:$RAY_PORT" --node-ip-address=127.0.0.1 \
        --num-cpus="$WORKER_CPUS" --resources="{\"worker_$i\": 1}" --object-store-memory=200000000 \
        --temp-dir="$RAY_TMP/w$i" --disable-usage-stats $(node_ports)
    echo "$i" > "$STATE/workers"
    wait_for "Ray worker node $i" "ray-worker-$i" 180 nodes_up $((i + 1))
done
echo "$WORKERS" > "$STATE/workers"
dashboard_up() {  # the token from the environment, never on a command line (curl's argv)
    python -c 'import os, sys, urllib.request as u
u.urlopen(u.Request(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]}), timeout=5)' "$1"
}
wait_for "Ray dashboard (jobs API)" ray-head 60 dashboard_up "http://127.0.0.1:$DASH_PORT/api/version"

# ---- addresses ------------------------------------------------------------------------------
{
    echo "export RAY_ADDRESS=127.0.0.1:$RAY_PORT"
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH_PORT"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN"
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export SLIMRAY_POSTGRES_URI=$PG_URI"
    echo "export PGPASSFILE=$STATE/pgpass"
    echo "export SLIMRAY_CACHE_KEY_FILE=$STATE/cache.key"
    if [[ $BASIC_AUTH == 1 ]]; then
        echo "export MLFLOW_TRACKING_USERNAME=admin"
        echo "export MLFLOW_TRACKING_PASSWORD=$(cat "$STATE/admin_password")"
    fi
} > "$STATE/env"
chmod 600 "$STATE/env"
trap - EXIT INT TERM
cat <<MSG
Cluster up: PostgreSQL 127.0.0.1:$PG_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT$([[ $BASIC_AUTH == 1 ]] && echo ' (basic auth, user admin)' || echo ' (NO AUTH)'),
Ray head 127.0.0.1:$RAY_PORT (dashboard / jobs http://127.0.0.1:$DASH_PORT) + $WORKERS worker node(s).
  source $STATE/env
  slimray submit experiment=smoke        # a Ray Job on this cluster, tracked on the server
  cluster/down.sh                        # stop everything
MSG
