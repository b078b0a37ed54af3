"""A flavour directory (qwen/, llama/): its config, prompt templates and seed instructions, and the prompts built
from them with the model's own chat template.

Prompt templates come in two formats, told apart by their file names:
  ours        self_instruct.txt, judge.txt, extend.txt: plain text with `$instruction`, `$response` fields
              (string.Template); the self-instruct text is sent as a chat request followed by the few-shot labels;
  original    self_instruct.md ({prompt1}, {prompt2}), judge_prompt.md ({prompt}), extend_response.md ({prompt},
              {response}), filled with str.format as the method's own code does; self_instruct.md is a complete
              raw-completion prompt and is sent as it is.
Chat formatting always comes from the tokenizer's chat template; a raw-completion prompt is that chat-formatted
request followed by an assistant prefix.
"""
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError
from .io import dataset_prompts, read_jsonl

OUR_FILES = {"self_instruct": "self_instruct.txt", "judge": "judge.txt", "extend": "extend.txt"}
ORIGINAL_FILES = {"self_instruct": "self_instruct.md", "judge": "judge_prompt.md", "extend": "extend_response.md"}
ORIGINAL_FIELDS = {"self_instruct": ("prompt1", "prompt2"), "judge": ("prompt",), "extend": ("prompt", "response")}
OUR_FIELDS = {"self_instruct": (), "judge": ("instruction",), "extend": ("instruction", "response")}


@dataclass
class FlavourConfig:
    language: str
    instruction_label: str
    judge_answer: str                     # the judge's whole answer (stripped, any case) that means "suitable"
    judge_yes: list[str]                  # the lenient parse (an option): the first of these words or ...
    judge_no: list[str]                   # ... of these decides
    meta_words: list[str] = field(default_factory=list)
    system_prompt: str | None = None      # sent in every chat request and every training row
    grow_pool: bool = True                # accepted instructions join the few-shot pool ...
    pool_reset_every: int | None = None   # ... which goes back to the seeds after this many accepted
    ext_line_join: str = "\n"             # joins the kept lines of the Extender's training input
    min_instruction_words: int = 3
    max_instruction_words: int = 500
    lf_templates: list[str] = field(default_factory=lambda: ["smollm2", "chatml", "qwen", "llama3"])

    def __post_init__(self):
        for name in ("judge_yes", "judge_no", "meta_words"):
            values = getattr(self, name)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"{name} must be a list of quoted strings (YAML reads a bare yes/no as true/false)")
        for name in ("judge_answer", "ext_line_join"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"{name} must be a non-empty quoted string")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise TypeError("system_prompt must be a quoted string or null")
        if self.pool_reset_every is not None and (not isinstance(self.pool_reset_every, int)
                                                  or self.pool_reset_every < 1):
            raise TypeError("pool_reset_every must be a positive whole number or null")


class Flavour:
    def __init__(self, directory: Path, prompt_templates: Path | str | None = None):
        self.dir = Path(directory).resolve()
        cfg_path = self.dir / "config.yaml"
        if not cfg_path.is_file():
            raise UsageError(f"{self.dir} is not a flavour directory (no config.yaml)")
        try:
            self.config = FlavourConfig(**(yaml.safe_load(cfg_path.read_text()) or {}))
        except (TypeError, yaml.YAMLError) as exc:
            raise UsageError(f"{cfg_path}: {exc}") from None
        self.template_dir = Path(prompt_templates).resolve() if prompt_templates else self.dir / "prompt_templates"
        self.original_format, self.templates = load_templates(self.template_dir)

    def fill(self, name: str, **fields) -> str:
        """Our field names (instruction, response) are mapped onto the original's (prompt, response)."""
        if self.original_format:
            if "instruction" in fields:
                fields["prompt"] = fields.pop("instruction")
            return self.templates[name].format(**fields)
        return self.templates[name].substitute(**fields)


def load_templates(directory: Path) -> tuple[bool, dict]:
    """(is the original's format, {name: template}); every file is checked for its fields once, here."""
    if not directory.is_dir():
        raise UsageError(f"--prompt_templates {directory}: no such directory")
    original = (directory / ORIGINAL_FILES["self_instruct"]).is_file()
    files, fields = (ORIGINAL_FILES, ORIGINAL_FIELDS) if original else (OUR_FILES, OUR_FIELDS)
    templates = {}
    for name, file_name in files.items():
        path = directory / file_name
        if not path.is_file():
            raise UsageError(f"prompt template {path} is missing (a template dir holds {', '.join(OUR_FILES.values())}"
                             f", or the original's {', '.join(ORIGINAL_FILES.values())})")
        text = path.read_text(encoding="utf-8")
        template = text if original else string.Template(text.strip())
        probe = {f: "x" for f in fields[name]}
        try:
            template.format(**probe) if original else template.substitute(**probe)
        except (KeyError, IndexError, ValueError) as exc:
            expected = ", ".join(("{%s}" if original else "$%s") % f for f in fields[name]) or "no fields"
            raise UsageError(f"prompt template {path}: bad or unknown field {exc} (expected {expected})") from None
        templates[name] = template
    return original, templates


def load_seeds(source: Path) -> list[str]:
    """Seed instructions from a JSONL file with `prompt`, or a `datasets.save_to_disk` dir with a `prompt` column."""
    source = Path(source)
    if source.is_dir():
        seeds = dataset_prompts(source, "--seeds")
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

    def messages(self, user_text: str) -> list[dict]:
        """A chat request: the flavour's system prompt (if any), then the user's text."""
        system = self.flavour.config.system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]

    def chat(self, user_text: str) -> str:
        return self.tokenizer.apply_chat_template(self.messages(user_text), tokenize=False, add_generation_prompt=True)

    # step0
    def self_instruct(self, first: str, second: str) -> str:
        if self.flavour.original_format:  # a complete raw-completion prompt, sent as it is
            return self.flavour.fill("self_instruct", prompt1=first, prompt2=second)
        label = self.flavour.config.instruction_label
        return (self.chat(self.flavour.fill("self_instruct"))
                + f"{label} 1: {first}\n{label} 2: {second}\n{label} 3:")

    def self_instruct_stops(self) -> list[str]:
        """The next instruction's label: "Instruction 4", "Instructions 4", "指令4", ..."""
        label = self.flavour.config.instruction_label
        variants = {label, label + "s", label.lower(), label.lower() + "s"}
        return sorted(f"{v}{space}4" for v in variants for space in (" ", ""))

    def parse_instruction(self, completion: str) -> str:
        return self._next_item.split(completion, maxsplit=1)[0].strip()

    def judge(self, instruction: str) -> str:
        return self.flavour.fill("judge", instruction=instruction)

    def parse_verdict(self, answer: str, lenient: bool = False) -> bool | None:
        """The method's: suitable only if the whole stripped answer is the flavour's `judge_answer` (any case).
        Lenient (an option for weak judges): the first yes/no word decides; None if there is none."""
        cfg = self.flavour.config
        if not lenient:
            return answer.strip().casefold() == cfg.judge_answer.casefold()
        text = answer.strip().lower()
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
