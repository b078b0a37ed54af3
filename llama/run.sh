#!/usr/bin/env bash
# Self-Lengthen on this node. Run it on every node (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT; one node by default).
# Usage: bash run.sh --base_model=PATH|default --instruct_count=N --max_iter=K [--workdir=DIR] [--adapter_mode=auto|lora|merged] [--profile=gpu|cpu-demo|study|tiny]
source "$(dirname "$0")/../scripts/venv.sh"
exec "$SL_PY" -m self_lengthen.pipeline --flavour_dir="$(cd "$(dirname "$0")" && pwd)" "$@"
