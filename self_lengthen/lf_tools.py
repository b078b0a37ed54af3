"""Helpers that run in the training env (.venv-train), through LLaMA-Factory's own APIs.

  python -m self_lengthen.lf_tools pick-template --model DIR --candidates a,b,c [--system TEXT]
      prints the first LLaMA-Factory template that tokenizes a probe conversation exactly like the model's chat
      template (exit 3 if none does);
  python -m self_lengthen.lf_tools tokenize CONFIG.yaml
      tokenizes the config's dataset once into its `tokenized_path` (written under a temp name, then renamed).

Only the standard library and llamafactory are imported here: this env has a different transformers.
"""
import argparse
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


def template_matches(model_dir: str, name: str, system: str | None) -> bool:
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = hf_ids(tokenizer, ([{"role": "system", "content": system}] if system else []) + PROBE)
    try:
        template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))
    except ValueError:
        return False
    prompt, answer = template.encode_oneturn(tokenizer, PROBE, system or None)
    return prompt + answer == expected


def pick_template(args) -> int:
    for name in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        if template_matches(args.model, name, args.system):
            print(name)
            return 0
    print(f"error: none of the LLaMA-Factory templates {args.candidates} tokenizes like the chat template of "
          f"{args.model}; set lf_templates in the flavour's config.yaml to one that does", file=sys.stderr)
    return 3


def tokenize(args) -> int:
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with open(args.config) as f:
        config = yaml.safe_load(f)
    final = config["tokenized_path"]
    if os.path.isdir(final) and os.listdir(final):
        print(f"already tokenized: {final}")
        return 0
    tmp = final.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    config = {**config, "tokenized_path": tmp}
    model_args, data_args, training_args, _, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    os.rename(tmp, final)
    print(f"tokenized {config['dataset']} -> {final}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="LLaMA-Factory helpers (training env)")
    sub = p.add_subparsers(dest="cmd", required=True)
    pick = sub.add_parser("pick-template")
    pick.add_argument("--model", required=True)
    pick.add_argument("--candidates", required=True)
    pick.add_argument("--system", default=None)
    tok = sub.add_parser("tokenize")
    tok.add_argument("config")
    args = p.parse_args(argv)
    return pick_template(args) if args.cmd == "pick-template" else tokenize(args)


if __name__ == "__main__":
    sys.exit(main())
