#!/usr/bin/env bash
# Stop exactly what run_server.sh started in --workdir (default: here). Usage: bash stop_server.sh [--workdir=DIR]
source "$(dirname "$0")/../scripts/venv.sh"
exec "$SL_PY" -m self_lengthen.serve.cluster stop "$@"
