"""Where self-lengthen keeps machine-wide state: the converted default model and vLLM's compile cache."""
import os
from pathlib import Path


def home() -> Path:
    """SELF_LENGTHEN_HOME, default ~/.cache/self-lengthen."""
    return Path(os.environ.get("SELF_LENGTHEN_HOME") or Path.home() / ".cache" / "self-lengthen")


def vllm_cache_root() -> Path:
    """A persistent VLLM_CACHE_ROOT, so torch.compile's ~100 s is paid once per machine."""
    return home() / "vllm-cache"
