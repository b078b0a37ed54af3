"""The API server renders chat prompts byte-identically to tokenizer.apply_chat_template, for several template styles.

Runs FastChat's real get_gen_params (as extended by us) against a worker's conversation dict; no engine needed.
"""
import asyncio

import pytest

from self_lengthen.chat_template import needs_special_tokens, render_chat, template_spec

# Written for this test: a Llama-3-style template (header tokens, BOS, an optional system turn) ...
LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# ... and a Qwen-style ChatML template that inserts its own system prompt when none is given.
QWEN_STYLE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a careful writer.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Write an essay on tides."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "写一篇关于长城的文章。"}, {"role": "assistant", "content": "好的。"},
     {"role": "user", "content": "  Longer, please.  "}],
]


@pytest.fixture(scope="module", params=["default", "llama3", "qwen"])
def tokenizer(request, default_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    if request.param == "llama3":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
        tok.chat_template = LLAMA3_STYLE
    elif request.param == "qwen":
        tok.chat_template = QWEN_STYLE
    return tok


def worker_conv(tok) -> dict:
    """The conversation dict our worker serves, built by the worker's own code."""
    from self_lengthen.serve.worker import VLLMWorker

    fake = VLLMWorker.__new__(VLLMWorker)
    fake._tokenizer = fake.tokenizer = tok
    fake.eos_ids = [tok.eos_token_id]
    fake.conv = VLLMWorker.make_conv_template(fake)
    return VLLMWorker.get_conv_template(fake)["conv"]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_render_chat_matches_apply_chat_template(tokenizer, messages):
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(template_spec(tokenizer), messages) == expected


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_api_server_prompt_is_byte_identical(tokenizer, messages, monkeypatch):
    from fastchat.serve import openai_api_server as fc

    from self_lengthen.serve import api_server

    conv = worker_conv(tokenizer)

    async def get_conv(model_name, worker_addr):
        return conv

    monkeypatch.setattr(fc, "get_conv", get_conv)
    monkeypatch.setattr(fc, "get_gen_params", fc.get_gen_params)  # undone after the test
    monkeypatch.setattr(fc, "app", type("App", (), {"add_middleware": lambda self, m: None})())
    api_server.extend(fc)
    params = asyncio.run(fc.get_gen_params(
        "base", "http://worker", messages, temperature=0.7, top_p=0.8, top_k=20, presence_penalty=0.0,
        frequency_penalty=0.0, max_tokens=10, echo=False, stop=None))
    assert params["prompt"] == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert params["stop_token_ids"] == [tokenizer.eos_token_id]


def test_rendered_prompt_tokenizes_like_apply_chat_template(tokenizer):
    messages = CONVERSATIONS[0]
    prompt = render_chat(template_spec(tokenizer), messages)
    ids = tokenizer.encode(prompt, add_special_tokens=needs_special_tokens(tokenizer, prompt))
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert ids == expected["input_ids"]


def test_the_stages_tokenizer_needs_no_torch_and_formats_and_counts_as_autotokenizer(default_model):
    """Every stage process loads the tokenizer at its start: without torch (seconds of each start on a slow CPU),
    and rendering and counting exactly as AutoTokenizer does."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    code = ("import json, sys\n"
            "from self_lengthen.chat_template import load_tokenizer\n"
            "tok = load_tokenizer(sys.argv[1])\n"
            "convs = json.loads(sys.argv[2])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules,\n"
            "  'chat': [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs],\n"
            "  'ids': [tok(c[-1]['content'], add_special_tokens=False)['input_ids'] for c in convs]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(default_model), json.dumps(CONVERSATIONS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    tok = AutoTokenizer.from_pretrained(default_model)
    assert got["torch"] is False
    assert got["chat"] == [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                           for c in CONVERSATIONS]
    assert got["ids"] == [tok(c[-1]["content"], add_special_tokens=False)["input_ids"] for c in CONVERSATIONS]
