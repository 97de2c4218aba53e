#!/usr/bin/env bash
# Kept for existing instructions: a head-only local cluster (PostgreSQL + MLflow + Ray head).
exec "$(dirname "${BASH_SOURCE[0]}")/up.sh" --workers 0 "$@"
