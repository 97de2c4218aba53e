#!/usr/bin/env bash
# A local multi-node cluster in one command, everything on 127.0.0.1:
#   PostgreSQL (own data directory, password auth)  ->  MLflow tracking server on it, proxied
#   artifacts  ->  token-authenticated Ray head  ->  N Ray worker nodes (own CPUs, custom resource).
# Waits until each answers, prints the addresses and writes them as `export` lines to
# $STATE/env (default .cluster/env) for `source`. Stop everything with cluster/down.sh.
#
#   cluster/up.sh [--workers N] [--worker-cpus C] [--head-cpus C] [--basic-auth]
#
# Idempotent: when everything recorded in $STATE is alive it only prints the addresses.
# Each component runs in its own process group, recorded in $STATE/pids/<name>; down.sh stops
# exactly those groups. Data (PostgreSQL, artifacts) stays in $STATE between up and down.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$(mkdir -p "${SLIMRAY_CLUSTER_DIR:-$ROOT/.cluster}" && cd "${SLIMRAY_CLUSTER_DIR:-$ROOT/.cluster}" && pwd)
VENV=${SLIMRAY_VENV:-$ROOT/.venv}
WORKERS=2 WORKER_CPUS=2 HEAD_CPUS=1 BASIC_AUTH=0  # workers hold the default pipelines' 2-CPU steps
while [[ $# -gt 0 ]]; do
    case $1 in
        --workers) WORKERS=$2; shift 2 ;;
        --worker-cpus) WORKER_CPUS=$2; shift 2 ;;
        --head-cpus) HEAD_CPUS=$2; shift 2 ;;
        --basic-auth) BASIC_AUTH=1; shift ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "up.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
PATH="$VENV/bin:$PATH"  # Ray jobs run with the python that `ray start` saw: the project's venv
for tool in ray mlflow python; do command -v $tool >/dev/null || { echo "up.sh: $tool not found in $VENV/bin" >&2; exit 2; }; done
PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /usr/lib/postgresql/15/bin/pg_ctl)")
[[ -x $PGBIN/pg_ctl && -x $PGBIN/initdb ]] || { echo "up.sh: PostgreSQL (initdb, pg_ctl) not found; apt-get install postgresql-15" >&2; exit 2; }
mkdir -p "$STATE/pids" "$STATE/logs"
chmod 711 "$STATE"  # others may traverse (PostgreSQL runs as its own user), not list

alive() { local f="$STATE/pids/$1"; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }
free_port() { python - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
# PostgreSQL refuses to run as root: run its tools as the `postgres` user then
if [[ $(id -u) == 0 ]]; then PGRUN=(runuser -u postgres --); else PGRUN=(); fi

# ---- already up? ----------------------------------------------------------------------------
if [[ -f $STATE/env ]]; then
    expected=(postgres mlflow ray-head); for i in $(seq 1 "$(cat "$STATE/workers" 2>/dev/null || echo 0)"); do expected+=("ray-worker-$i"); done
    up=0; for c in "${expected[@]}"; do alive "$c" && up=$((up + 1)); done
    if [[ $up == "${#expected[@]}" ]]; then
        echo "Cluster already up ($up processes groups alive); addresses in $STATE/env:"; cat "$STATE/env"; exit 0
    elif [[ $up -gt 0 ]]; then
        echo "up.sh: cluster partially up ($up of ${#expected[@]} alive); run cluster/down.sh first" >&2; exit 1
    fi
fi

start_group() {  # name, command...: run in a new session (own process group), record its PID
    local name=$1; shift
    setsid nohup "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$STATE/pids/$name"
}
wait_for() {  # what, group, seconds, command...: fails early when the group's leader died
    local what=$1 group=$2 deadline=$((SECONDS + $3)); shift 3
    while [[ $SECONDS -lt $deadline ]]; do
        "$@" >/dev/null 2>&1 && return 0
        alive "$group" || { echo "up.sh: $what exited (see $STATE/logs/$group.log); run cluster/down.sh" >&2; exit 1; }
        sleep 0.5
    done
    echo "up.sh: $what did not come up in time (logs in $STATE/logs); run cluster/down.sh" >&2; exit 1
}

# ---- PostgreSQL -----------------------------------------------------------------------------
PG=$STATE/postgres
PG_PORT=$(cat "$STATE/pg_port" 2>/dev/null || free_port); echo "$PG_PORT" > "$STATE/pg_port"
if [[ ! -f $PG/data/PG_VERSION ]]; then
    mkdir -p "$PG"; python -c 'import secrets; print(secrets.token_hex(16))' > "$PG/password"
    [[ $(id -u) == 0 ]] && chown -R postgres "$PG"
    chmod 700 "$PG"; chmod 600 "$PG/password"
    "${PGRUN[@]}" "$PGBIN/initdb" -D "$PG/data" -U slimray -A scram-sha-256 --pwfile="$PG/password" >"$STATE/logs/initdb.log" 2>&1
fi
"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PG/data" -o "-k $PG -h 127.0.0.1 -p $PG_PORT" -l "$PG/server.log" -w start >/dev/null
head -1 "$PG/data/postmaster.pid" > "$STATE/pids/postgres"
PGPASSWORD=$(cat "$PG/password"); export PGPASSWORD
psql -h 127.0.0.1 -p "$PG_PORT" -U slimray -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$PG_PORT" -U slimray -d postgres -qc "CREATE DATABASE mlflow" >/dev/null
PG_URI="postgresql+psycopg2://slimray:$PGPASSWORD@127.0.0.1:$PG_PORT/mlflow"

# ---- MLflow tracking server on PostgreSQL, proxied artifacts --------------------------------
MLFLOW_PORT=$(free_port)
MLFLOW_ARGS=(server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 --backend-store-uri "$PG_URI"
             --serve-artifacts --artifacts-destination "$STATE/artifacts" --default-artifact-root mlflow-artifacts:/)
AUTH_ENV=()
if [[ $BASIC_AUTH == 1 ]]; then
    [[ -f $STATE/admin_password ]] || python -c 'import secrets; print(secrets.token_hex(12))' > "$STATE/admin_password"
    cat > "$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/basic_auth.db
admin_username = admin
admin_password = $(cat "$STATE/admin_password")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    chmod 600 "$STATE/basic_auth.ini" "$STATE/admin_password"
    [[ -f $STATE/flask_secret ]] || python -c 'import secrets; print(secrets.token_hex(24))' > "$STATE/flask_secret"
    chmod 600 "$STATE/flask_secret"
    MLFLOW_ARGS+=(--app-name basic-auth)
    AUTH_ENV=(MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STATE/flask_secret")")
fi
start_group mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true "${AUTH_ENV[@]}" \
    "$VENV/bin/mlflow" "${MLFLOW_ARGS[@]}"
wait_for "MLflow server" mlflow 120 curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"

# ---- Ray: token-authenticated head + workers ------------------------------------------------
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
[[ -f $STATE/ray_token ]] || python -c 'import secrets; print(secrets.token_hex(16))' > "$STATE/ray_token"
chmod 600 "$STATE/ray_token"
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
start_group ray-head ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
    --num-cpus="$HEAD_CPUS" --resources='{"head": 1}' --object-store-memory=200000000 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --ray-client-server-port="$CLIENT_PORT" --temp-dir="$RAY_TMP" --disable-usage-stats $(node_ports)
wait_for "Ray head" ray-head 90 ray status --address="127.0.0.1:$RAY_PORT"
nodes_up() { [[ $(ray status --address="127.0.0.1:$RAY_PORT" 2>/dev/null | grep -c ' node_') -ge $1 ]]; }
for i in $(seq 1 "$WORKERS"); do  # one at a time: a loaded machine times out nodes started together
    # shellcheck disable=SC2046
    start_group "ray-worker-$i" ray start --block --address="127.0.0.1:$RAY_PORT" --node-ip-address=127.0.0.1 \
        --num-cpus="$WORKER_CPUS" --resources="{\"worker_$i\": 1}" --object-store-memory=200000000 \
        --temp-dir="$RAY_TMP" --disable-usage-stats $(node_ports)
    echo "$i" > "$STATE/workers"
    wait_for "Ray worker node $i" "ray-worker-$i" 180 nodes_up $((i + 1))
done
echo "$WORKERS" > "$STATE/workers"
wait_for "Ray dashboard (jobs API)" ray-head 60 curl -sf -H "Authorization: Bearer $RAY_AUTH_TOKEN" "http://127.0.0.1:$DASH_PORT/api/version"

# ---- addresses ------------------------------------------------------------------------------
{
    echo "export RAY_ADDRESS=127.0.0.1:$RAY_PORT"
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH_PORT"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN"
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export SLIMRAY_POSTGRES_URI=$PG_URI"
    if [[ $BASIC_AUTH == 1 ]]; then
        echo "export MLFLOW_TRACKING_USERNAME=admin"
        echo "export MLFLOW_TRACKING_PASSWORD=$(cat "$STATE/admin_password")"
    fi
} > "$STATE/env"
chmod 600 "$STATE/env"
cat <<MSG
Cluster up: PostgreSQL 127.0.0.1:$PG_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT$([[ $BASIC_AUTH == 1 ]] && echo ' (basic auth)'),
Ray head 127.0.0.1:$RAY_PORT (dashboard / jobs http://127.0.0.1:$DASH_PORT) + $WORKERS worker node(s).
  source $STATE/env
  slimray submit experiment=smoke        # a Ray Job on this cluster, tracked on the server
  cluster/down.sh                        # stop everything
MSG
