#!/usr/bin/env bash
# Start a Ray head (+ MLflow tracking server with proxied artifacts) on 127.0.0.1, the way a
# real cluster is run, so `slimray ray=cluster tracking=server` can be tried end to end.
# Workers on other machines join with:  RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray start --address=<head>:6379
# Stop everything with cluster/stop-local.sh (it kills the PIDs recorded here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STATE=${SLIMRAY_CLUSTER_DIR:-.cluster}
mkdir -p "$STATE"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')}
echo "$RAY_AUTH_TOKEN" > "$STATE/token" && chmod 600 "$STATE/token"

# Ray from the venv, so jobs run with the project's Python.
PATH="$PWD/.venv/bin:$PATH" ray start --head --port=6379 --num-cpus="${NUM_CPUS:-2}" \
    --node-ip-address=127.0.0.1 --include-dashboard=true --dashboard-host=127.0.0.1 --disable-usage-stats

MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup .venv/bin/mlflow server --host 127.0.0.1 --port 5000 \
    --workers 1 --backend-store-uri "sqlite:///$PWD/$STATE/mlflow.db" \
    --serve-artifacts --artifacts-destination "$PWD/$STATE/artifacts" > "$STATE/mlflow.log" 2>&1 &
echo $! > "$STATE/mlflow.pid"
for _ in $(seq 60); do curl -sf http://127.0.0.1:5000/health >/dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:5000/health >/dev/null || { echo "mlflow server did not start: $STATE/mlflow.log" >&2; exit 1; }

cat <<MSG
Ray head and MLflow server are up. In this shell:
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\$(cat $STATE/token)
  .venv/bin/slimray ray=cluster tracking=server
MLflow UI: http://127.0.0.1:5000   Ray dashboard: http://127.0.0.1:8265
MSG
