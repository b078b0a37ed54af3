"""Helpers that run in the training env (.venv-train), through LLaMA-Factory's own APIs.

  python -m self_lengthen.lf_tools pick-template --model DIR --candidates a,b,c [--system TEXT]
      prints, as one JSON line, the first LLaMA-Factory template that tokenizes a probe conversation exactly like
      the model's chat template renders it with that system prompt (or none), and the system text the training rows
      must carry for that (null: the template's own default); exit 3 if no template does;
  python -m self_lengthen.lf_tools tokenize CONFIG.yaml [CONFIG.yaml ...]
      tokenizes each config's dataset once into its `tokenized_path` (written under a temp name, then renamed), and
      writes beside it `<tokenized_path>.stats.json`: how many rows LLaMA-Factory cut at the config's cutoff_len.

Only the standard library and llamafactory are imported here: this env has a different transformers.
"""
import argparse
import json
import os
import shutil
import sys

PROBE = [
    {"role": "user", "content": "Write a short note about rivers.\nKeep it simple."},
    {"role": "assistant", "content": "Rivers carry water from the hills to the sea."},
]


def hf_ids(tokenizer, messages):
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return list(out["input_ids"])


SENTINEL = "\x00SYSTEM\x00"


def system_for(tokenizer, template, messages: list[dict], system: str | None):
    """The system texts worth trying with `template`, in order: the one asked for (None: the template's default),
    then what the chat template puts in the system slot. The latter differs where the chat template adds text of
    its own around a system message (Llama-3.1 writes its date lines before it) or inserts a default one."""
    yield system
    prompt, answer = template.encode_oneturn(tokenizer, PROBE, SENTINEL)
    lf_text = tokenizer.decode(prompt + answer, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if SENTINEL not in lf_text:
        return
    head, tail = lf_text.split(SENTINEL, 1)
    hf_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if hf_text.startswith(head) and hf_text.endswith(tail) and len(hf_text) > len(head) + len(tail):
        yield hf_text[len(head):len(hf_text) - len(tail)]


def template_matches(model_dir: str, name: str, system: str | None) -> tuple[bool, str | None]:
    """(whether LLaMA-Factory's `name` reproduces the chat template's tokens, the training rows' system text)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = ([{"role": "system", "content": system}] if system else []) + PROBE
    expected = hf_ids(tokenizer, messages)
    try:
        template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))
    except ValueError:
        return False, None
    for candidate in system_for(tokenizer, template, messages, system):
        prompt, answer = template.encode_oneturn(tokenizer, PROBE, candidate or None)
        if prompt + answer == expected:
            return True, candidate or None
    return False, None


def pick_template(args) -> int:
    for name in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        matches, system = template_matches(args.model, name, args.system)
        if matches:
            print(json.dumps({"template": name, "system": system}))
            return 0
    print(f"error: none of the LLaMA-Factory templates {args.candidates} tokenizes like the chat template of "
          f"{args.model}; set lf_templates in the flavour's config.yaml to one that does", file=sys.stderr)
    return 3


def tokenize(args) -> int:
    for path in args.configs:
        tokenize_one(path)
    return 0


def tokenize_one(config_path: str) -> None:
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with open(config_path) as f:
        config = yaml.safe_load(f)
    final = config["tokenized_path"].rstrip("/")
    tmp = final + ".tmp"
    model_args, data_args, training_args, _, _ = get_train_args({**config, "tokenized_path": tmp})
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    if os.path.isdir(final) and os.listdir(final):
        print(f"already tokenized: {final}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
        os.rename(tmp, final)
        print(f"tokenized {config['dataset']} -> {final}")
    stats = cut_rows(config, tokenizer_module["tokenizer"], template, int(data_args.cutoff_len))
    with open(final + ".stats.json.tmp", "w") as f:
        json.dump(stats, f)
    os.replace(final + ".stats.json.tmp", final + ".stats.json")
    print(json.dumps(stats))


def cut_rows(config: dict, tokenizer, template, cutoff_len: int) -> dict:
    """How many of the config's dataset rows are longer than cutoff_len, encoded as LLaMA-Factory encodes them for
    training. It cuts such a row (the end of its prompt, or of its answer with the token that ends it): trained on,
    it teaches the model to write on rather than to finish."""
    rows = cut = 0
    for name in str(config["dataset"]).split(","):
        with open(os.path.join(config["dataset_dir"], "dataset_info.json")) as f:
            info = json.load(f)[name.strip()]
        columns = {"prompt": "instruction", "query": "input", "response": "output", **info.get("columns", {})}
        with open(os.path.join(config["dataset_dir"], info["file_name"]), encoding="utf-8") as f:
            records = json.load(f)
        for r in records:
            query = "\n".join(x for x in (r[columns["prompt"]], r.get(columns["query"]) or "") if x)
            messages = [{"role": "user", "content": query}, {"role": "assistant", "content": r[columns["response"]]}]
            system = r.get(columns["system"]) if "system" in columns else None
            pairs = template.encode_multiturn(tokenizer, messages, system)
            length = sum(len(a) + len(b) for a, b in pairs) + int(template.efficient_eos)
            rows += 1
            cut += length > cutoff_len
    return {"rows": rows, "cut": cut, "cutoff_len": cutoff_len}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="LLaMA-Factory helpers (training env)")
    sub = p.add_subparsers(dest="cmd", required=True)
    pick = sub.add_parser("pick-template")
    pick.add_argument("--model", required=True)
    pick.add_argument("--candidates", required=True)
    pick.add_argument("--system", default=None)
    tok = sub.add_parser("tokenize")
    tok.add_argument("configs", nargs="+")
    args = p.parse_args(argv)
    return pick_template(args) if args.cmd == "pick-template" else tokenize(args)


if __name__ == "__main__":
    sys.exit(main())
