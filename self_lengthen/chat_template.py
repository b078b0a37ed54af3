"""Chat formatting from the model's own tokenizer chat template, never from hard-coded special tokens.

The serving worker ships its tokenizer's template and special tokens to the API server (`template_spec`), which
renders chat requests with `render_chat`: the same Jinja renderer `tokenizer.apply_chat_template` uses, so the prompt
is byte-identical to it.
"""
from pathlib import Path
from typing import Any


def load_tokenizer(model_dir):
    """The model's tokenizer, for chat formatting and token counts: from its tokenizer.json when it has one.

    That needs no torch, which AutoTokenizer imports: about 5 s of every stage process's start on a slow CPU.
    """
    if (Path(model_dir) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def template_spec(tokenizer) -> dict[str, Any]:
    """What a renderer needs from a tokenizer: the template and the special tokens it may reference."""
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of {tokenizer.name_or_path} has no chat template")
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {"chat_template": tokenizer.chat_template, "special_tokens": specials}


def render_chat(spec: dict[str, Any], messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=spec["chat_template"],
        add_generation_prompt=add_generation_prompt,
        **spec["special_tokens"],
    )
    return rendered[0]


def needs_special_tokens(tokenizer, prompt: str) -> bool:
    """Whether tokenizing `prompt` should add the tokenizer's special tokens (a BOS, say).

    A prompt rendered from the chat template already carries them; adding them again would double the BOS.
    """
    bos = tokenizer.bos_token
    return not (bos and prompt.startswith(bos))
