"""What the machine's processors can do, for the choices that depend on it (the engines' and the training's dtype)."""


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 runs natively. Without them (AVX2) torch emulates it, many times slower."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
