# Sourced by the flavour drivers: the repository root and the two environments' pythons.
SL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SL_PY="$SL_ROOT/.venv/bin/python"
SL_TRAIN_PY="$SL_ROOT/.venv-train/bin/python"
if [ ! -x "$SL_PY" ]; then
  echo "error: the serving environment is missing ($SL_PY); run 'make setup' in $SL_ROOT first" >&2
  exit 2
fi
export SL_ROOT SL_PY SL_TRAIN_PY
