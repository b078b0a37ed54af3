#!/usr/bin/env bash
# More data with the final adapters: serve them and repeat step0 + step1 in batches of --instruct_count until --total_count instructions.
# Usage: bash run_collect_data.sh --base_model=PATH|default --max_iter=K --instruct_count=N --total_count=T [--workdir=DIR] [--adapter_mode=auto|lora|merged]
source "$(dirname "$0")/../scripts/venv.sh"
exec "$SL_PY" -m self_lengthen.collect --flavour_dir="$(cd "$(dirname "$0")" && pwd)" "$@"
