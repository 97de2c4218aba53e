#!/usr/bin/env bash
# Stop what cluster/start-local.sh started: the MLflow server by its PID, Ray with `ray stop`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STATE=${SLIMRAY_CLUSTER_DIR:-.cluster}
if [[ -f "$STATE/mlflow.pid" ]]; then
    pid=$(cat "$STATE/mlflow.pid")
    # the server's own workers are its children: stop the whole group, then the leader
    pkill -TERM -P "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$STATE/mlflow.pid"
fi
RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat "$STATE/token" 2>/dev/null) .venv/bin/ray stop
