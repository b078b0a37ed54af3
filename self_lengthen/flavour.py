"""A flavour directory (qwen/, llama/): its config, prompt templates and seed instructions, and the prompts built
from them with the model's own chat template.

Templates are plain text with `$name` fields (string.Template). Chat formatting always comes from the tokenizer's
chat template; a raw-completion prompt is that chat-formatted request followed by an assistant prefix.
"""
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError
from .io import read_jsonl

TEMPLATES = ("self_instruct", "judge", "extend")


@dataclass
class FlavourConfig:
    language: str
    instruction_label: str
    judge_yes: list[str]
    judge_no: list[str]
    meta_words: list[str] = field(default_factory=list)
    grow_pool: bool = True
    min_instruction_words: int = 3
    max_instruction_words: int = 500
    lf_templates: list[str] = field(default_factory=lambda: ["smollm2", "chatml", "qwen", "llama3"])

    def __post_init__(self):
        for name in ("judge_yes", "judge_no", "meta_words"):
            values = getattr(self, name)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"{name} must be a list of quoted strings (YAML reads a bare yes/no as true/false)")


class Flavour:
    def __init__(self, directory: Path):
        self.dir = Path(directory).resolve()
        cfg_path = self.dir / "config.yaml"
        if not cfg_path.is_file():
            raise UsageError(f"{self.dir} is not a flavour directory (no config.yaml)")
        try:
            self.config = FlavourConfig(**(yaml.safe_load(cfg_path.read_text()) or {}))
        except (TypeError, yaml.YAMLError) as exc:
            raise UsageError(f"{cfg_path}: {exc}") from None
        self.templates = {}
        for name in TEMPLATES:
            path = self.dir / "prompt_templates" / f"{name}.txt"
            if not path.is_file():
                raise UsageError(f"prompt template {path} is missing")
            self.templates[name] = string.Template(path.read_text().strip())

    def fill(self, name: str, **fields) -> str:
        return self.templates[name].substitute(**fields)


def load_seeds(source: Path) -> list[str]:
    """Seed instructions from a JSONL file with `prompt`, or a `datasets.save_to_disk` dir with a `prompt` column."""
    source = Path(source)
    if source.is_dir():
        try:
            from datasets import load_from_disk

            data = load_from_disk(str(source))
        except Exception as exc:  # datasets raises several types for a dir that is not a dataset
            raise UsageError(f"--seeds {source}: not a dataset saved with save_to_disk ({exc})") from None
        if "prompt" not in data.column_names:
            raise UsageError(f"--seeds {source}: the dataset has no 'prompt' column (columns: {data.column_names})")
        seeds = [p for p in data["prompt"] if isinstance(p, str) and p.strip()]
    elif source.is_file():
        rows = read_jsonl(source, required=("prompt",), allow_empty=True)
        bad = next((r["_line"] for r in rows if not isinstance(r["prompt"], str)), None)
        if bad:
            raise UsageError(f"--seeds {source}: line {bad}: 'prompt' is not a string")
        seeds = [r["prompt"].strip() for r in rows if r["prompt"].strip()]
    else:
        raise UsageError(f"--seeds {source}: no such file or directory")
    if len(seeds) < 2:
        raise UsageError(f"--seeds {source}: needs at least 2 seed instructions, found {len(seeds)}")
    return seeds


class PromptBuilder:
    """Builds every request of the pipeline for one flavour and one tokenizer."""

    def __init__(self, flavour: Flavour, tokenizer):
        self.flavour, self.tokenizer = flavour, tokenizer
        label = re.escape(flavour.config.instruction_label)
        # The model sometimes writes "Instructions 4:" for "Instruction 4:": allow an s, any case, either colon.
        self._next_item = re.compile(rf"\s*{label}s?\s*4\s*[:：]?", re.IGNORECASE)

    def chat(self, user_text: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                                  add_generation_prompt=True)

    # step0
    def self_instruct(self, first: str, second: str) -> str:
        label = self.flavour.config.instruction_label
        return (self.chat(self.flavour.fill("self_instruct"))
                + f"{label} 1: {first}\n{label} 2: {second}\n{label} 3:")

    def self_instruct_stops(self) -> list[str]:
        label = self.flavour.config.instruction_label
        variants = {label, label + "s", label.lower(), label.lower() + "s"}
        return sorted(f"{v} 4" for v in variants)

    def parse_instruction(self, completion: str) -> str:
        return self._next_item.split(completion, maxsplit=1)[0].strip()

    def judge(self, instruction: str) -> str:
        return self.flavour.fill("judge", instruction=instruction)

    def parse_verdict(self, answer: str) -> bool | None:
        """Lenient: the first yes/no word decides; None if there is none."""
        text = answer.strip().lower()
        cfg = self.flavour.config
        words = [(w.lower(), True) for w in cfg.judge_yes] + [(w.lower(), False) for w in cfg.judge_no]
        hits = []
        for word, verdict in words:
            pattern = rf"\b{re.escape(word)}\b" if word.isascii() else re.escape(word)
            m = re.search(pattern, text)
            if m:
                hits.append((m.start(), verdict))
        return min(hits)[1] if hits else None

    # step2
    def extend_request(self, instruction: str, response: str) -> str:
        return self.flavour.fill("extend", instruction=instruction, response=response)

    def extend_completion(self, instruction: str, response: str, prefix: str) -> str:
        return self.chat(self.extend_request(instruction, response)) + prefix


def pop_flavour_dir(argv: list[str]) -> Path:
    """Take `--flavour_dir=DIR` (passed by a flavour's shell driver) out of argv."""
    for i, arg in enumerate(argv):
        if arg.startswith("--flavour_dir="):
            argv.pop(i)
            return Path(arg.split("=", 1)[1])
    raise SystemExit("--flavour_dir=DIR is required (the flavour's run scripts pass it)")
