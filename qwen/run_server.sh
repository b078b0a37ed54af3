#!/usr/bin/env bash
# Serve the base model (and, with --iter=K >= 1, the LoRAs of results/iter_K) on this node.
# Usage: bash run_server.sh --base_model=PATH|default --iter=K [--workdir=DIR] [--timeout=SECONDS] [--adapters=gen_sft,ext_sft] [--adapter_mode=auto|lora|merged]
source "$(dirname "$0")/../scripts/venv.sh"
exec "$SL_PY" -m self_lengthen.serve.cluster start "$@"
