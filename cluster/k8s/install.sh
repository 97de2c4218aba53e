#!/usr/bin/env bash
# Install slimray on Kubernetes (KubeRay >= 1.1 installed, `kubectl` pointed at the namespace):
# generates every secret at install time, checks that no manifest holds a placeholder, applies.
#
#   cluster/k8s/install.sh              # generate slimray-secrets (unless it exists), apply all
#   cluster/k8s/install.sh --dry-run D  # write what would be applied into D (0700), apply nothing
#
# Secrets (Ray token, PostgreSQL password, MLflow admin password and session key, the MLflow
# auth config, the cache signing key) are random, written to 0600 files in a private temp dir
# and turned into the Secret manifest by Python: never a command-line argument (`ps`). The
# committed cluster/k8s/secrets.yaml.example is a template of placeholders, never applied (a
# name `kubectl apply -f cluster/k8s/` skips); cluster/k8s/check_secrets.py refuses it, and
# refuses any generated file that is not sound.
set -euo pipefail
umask 077
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
OUT=""
if [[ ${1:-} == --dry-run ]]; then OUT=${2:?--dry-run needs a directory}; mkdir -p "$OUT"; chmod 700 "$OUT"; fi
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

"$PY" - "$WORK/secret.yaml" <<'PY'
import secrets, sys, yaml
admin = secrets.token_hex(16)
ini = (
    "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:////mlflow-auth/basic_auth.db\n"
    f"admin_username = admin\nadmin_password = {admin}\n"
    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
)
data = {
    "ray-auth-token": secrets.token_hex(16),
    "postgres-password": secrets.token_hex(16),
    "mlflow-admin-password": admin,
    "mlflow-flask-secret": secrets.token_hex(24),
    "basic_auth.ini": ini,
    "cache.key": secrets.token_hex(32),
}
doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slimray-secrets"}, "type": "Opaque", "stringData": data}
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(doc, f)
PY
MANIFESTS=("$HERE/postgres.yaml" "$HERE/mlflow.yaml" "$HERE/raycluster.yaml" "$HERE/rayjob.yaml")
"$PY" "$HERE/check_secrets.py" "$WORK/secret.yaml" "${MANIFESTS[@]}"  # the validation step
if [[ -n $OUT ]]; then
    cp "$WORK/secret.yaml" "$OUT/secret.yaml"; cp "${MANIFESTS[@]}" "$OUT/"
    echo "install.sh: wrote the manifests to $OUT (nothing applied)"; exit 0
fi
if kubectl get secret slimray-secrets >/dev/null 2>&1; then
    echo "install.sh: secret slimray-secrets exists; kept (delete it to rotate every value)"
else
    kubectl apply -f "$WORK/secret.yaml"
fi
for m in "${MANIFESTS[@]}"; do kubectl apply -f "$m"; done
