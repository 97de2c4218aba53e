#!/usr/bin/env bash
# Kept for existing instructions: stops what up.sh / start-local.sh started.
exec "$(dirname "${BASH_SOURCE[0]}")/down.sh" "$@"
