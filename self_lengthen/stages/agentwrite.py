"""AgentWrite (LongWriter, Bai et al. 2024): a long text made by planning, then writing section by section.

Per instruction, a chain of chat requests to one served model: first a plan (sections, each with what it covers and
a word count), then each section in turn, given the instruction, the plan and the text written so far. The sections,
joined by blank lines, are the response. A plan that cannot be used is rejected with a reason and asked for again
(up to --max_tries plans); an empty section is asked for again (up to --max_tries times); a chain whose text so far
leaves no room in the model's context ends as context_full, unkept. Every finished request is journaled, so a stop
(Ctrl-C, kill -9, a time budget) loses at most the requests in flight and a rerun continues each chain from its last
finished section.

Instructions: step0's of the iteration (results/iter_K/instructions), or --instructions (a JSONL with `prompt`,
`instruction` or `query`, or a dataset dir with `prompt`). Output: results/iter_K/agentwrite_responses (prompt,
plan, sections, agentwrite_response), which collect_data.py gathers beside Self-Lengthen's, marked `agentwrite`.
The prompts are the flavour's prompt_templates/agentwrite_plan.txt ($instruction) and agentwrite_write.txt
($instruction, $plan, $written, $number, $section, $words).
"""
import re
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..client import Completion
from ..errors import UsageError, cli_main, positive_int
from ..evaluation import parse_numbers
from ..io import dataset_prompts, read_jsonl
from .common import StageContext, base_parser, finished, journal_path, run_stage, stable_key
from .runner import Journal

NAME = "agentwrite_responses"
MAX_TRIES = 3          # plans per instruction, and requests per section
MAX_SECTIONS = 40
MIN_ROOM = 128         # tokens a request needs left in the context; with less, the chain ends as context_full
TEMPLATES = {"plan": ("agentwrite_plan.txt", ("instruction",)),
             "write": ("agentwrite_write.txt", ("instruction", "plan", "written", "number", "section", "words"))}
NOTHING_WRITTEN = "-"

# A section's first line: "Section 3:", "Paragraph 3 -", "Part 3.", "3.", "3)", "**3.**", "第3部分：", "第三段" ...
_HEADER = re.compile(r"^\s*(?:[#>*\-\s]*)(?:\*\*)?\s*(?:(?:section|paragraph|part|step)\s*(\d+)"
                     r"|第\s*([0-9一二三四五六七八九十]+)\s*(?:部分|段|节|章|步)|(\d+)\s*[.)、:：](?!\d))", re.IGNORECASE)
# A word count: "(400 words)", "Word count: 400", "400字", "约400字", "字数：400"
_WORDS = re.compile(r"(\d[\d,]*)\s*(?:words?\b|字)|(?:word count|字数)\s*[:：]?\s*(?:about|约)?\s*(\d[\d,]*)",
                    re.IGNORECASE)


@dataclass
class Plan:
    sections: list[str]   # what each section covers, as the plan says it
    words: list[int]      # each section's word count


def parse_plan(text: str, max_sections: int = MAX_SECTIONS,
               total_words: int | None = None) -> tuple[Plan | None, str | None]:
    """A plan from the model's answer, leniently: any numbered list of sections, a word count anywhere in a
    section's lines; a section without one gets the mean of the others. A plan with no word count at all shares
    `total_words` (the length the instruction asks for, if it names one) evenly. (plan, None) or (None, reason)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if _HEADER.match(line):
            blocks.append([line.strip()])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    if len(blocks) < 2:
        return None, "plan_unparseable"
    if len(blocks) > max_sections:
        return None, "plan_too_many_sections"
    counts = []
    for block in blocks:
        found = [int((a or b).replace(",", "")) for a, b in _WORDS.findall(" ".join(block))]
        counts.append(found[-1] if found and found[-1] > 0 else None)
    known = [c for c in counts if c]
    if not known and total_words:
        known = counts = [max(1, round(total_words / len(blocks)))] * len(blocks)
    if not known:
        return None, "plan_no_word_counts"
    mean = round(sum(known) / len(known))
    return Plan(["\n".join(b) for b in blocks], [c or mean for c in counts]), None


def asked_length(instruction: str) -> int | None:
    """The length an instruction asks for, in words, if it names one ("a 1500-word essay", "写一篇两千字的文章")."""
    numbers = parse_numbers(instruction)
    return numbers[0] if numbers else None


def load_templates(flavour_dir: Path) -> dict[str, string.Template]:
    templates = {}
    for name, (file_name, fields) in TEMPLATES.items():
        path = flavour_dir / "prompt_templates" / file_name
        if not path.is_file():
            raise UsageError(f"prompt template {path} is missing (AgentWrite needs {file_name})")
        template = string.Template(path.read_text(encoding="utf-8").strip())
        try:
            template.substitute({f: "x" for f in fields})
        except (KeyError, ValueError) as exc:
            raise UsageError(f"prompt template {path}: bad or unknown field {exc} "
                             f"(expected {', '.join('$' + f for f in fields)})") from None
        templates[name] = template
    return templates


def fresh_state() -> dict:
    """A chain: which plan try, the plan (None until one parses), the sections written, reasons, tokens."""
    return {"try": 0, "plan": None, "sections": [], "words": [], "written": [], "section_tries": 0,
            "reasons": {}, "tokens": 0}


def context_length(base_model: str) -> int | None:
    """The served model's context in tokens (its config's max_position_embeddings), if it says."""
    from transformers import AutoConfig

    from ..default_model import resolve_base_model

    value = getattr(AutoConfig.from_pretrained(str(resolve_base_model(base_model))), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def make_work(ctx: StageContext, model: str, journal: Journal, templates: dict[str, string.Template],
              context: int | None):
    tries = ctx.args.max_tries or MAX_TRIES

    def request(user_text: str) -> dict | None:
        """A request's sampling (LongWriter's method: no stop strings), its max_tokens within the context left
        after the prompt; None if less than MIN_ROOM tokens are left (the text so far fills the context)."""
        if context is None:
            return {"max_tokens": ctx.args.max_tokens}
        prompt = ctx.prompts.tokenizer(ctx.prompts.chat(user_text), add_special_tokens=False)["input_ids"]
        room = context - len(prompt)
        return {"max_tokens": min(ctx.args.max_tokens, room)} if room >= MIN_ROOM else None

    def work(key: str, prompt: str, stop: threading.Event) -> dict | None:
        state = dict(journal.records.get(key) or fresh_state())
        state.pop("key", None)
        reasons = Counter(state["reasons"])

        def save(answer: Completion, rejected: str | None = None) -> None:
            state["reasons"], state["tokens"] = dict(reasons), state["tokens"] + answer.completion_tokens
            state["time"] = round(time.time(), 1)
            journal.record(key, state, answer, rejected=rejected)

        def done(status: str) -> dict:
            return {"status": status, "prompt": prompt, "tries": state["try"] + 1, "reasons": reasons,
                    "tokens": state["tokens"], **({"plan": state["plan"], "sections": len(state["written"]),
                                                   "agentwrite_response": "\n\n".join(state["written"])}
                                                  if status == "accepted" else {})}

        while state["plan"] is None:
            if state["try"] >= tries:
                return done("exhausted")
            if stop.is_set():
                return None
            text = templates["plan"].substitute(instruction=prompt)
            if (sampling := request(text)) is None:
                reasons["context_full"] += 1
                return done("exhausted")
            answer = ctx.client.chat(model, ctx.prompts.messages(text), **sampling)
            plan, reason = parse_plan(answer.text, total_words=asked_length(prompt))
            if plan is None:
                reasons[reason] += 1
                state["try"] += 1
            else:
                state.update(plan=answer.text.strip(), sections=plan.sections, words=plan.words)
            save(answer, rejected=reason)
        while len(state["written"]) < len(state["sections"]):
            if state["section_tries"] >= tries:
                return done("exhausted")
            if stop.is_set():
                return None
            i = len(state["written"])
            text = templates["write"].substitute(
                instruction=prompt, plan=state["plan"], written="\n\n".join(state["written"]) or NOTHING_WRITTEN,
                number=i + 1, section=state["sections"][i], words=state["words"][i])
            if (sampling := request(text)) is None:  # an unfinished text is not kept
                reasons["context_full"] += 1
                return done("exhausted")
            answer = ctx.client.chat(model, ctx.prompts.messages(text), **sampling)
            section = answer.text.strip()
            if section:
                state["written"] = state["written"] + [section]
                state["section_tries"] = 0
                save(answer)
            else:
                reasons["empty_section"] += 1
                state["section_tries"] += 1
                save(answer, rejected="empty_section")
        return done("accepted")

    return work


def load_instructions(source: Path) -> list[str]:
    """Instructions from a dataset dir (`prompt`) or a JSONL (`prompt`, `instruction` or `query`)."""
    if source.is_dir():
        return dataset_prompts(source, "--instructions")
    out = []
    for row in read_jsonl(source):
        text = next((row[f] for f in ("prompt", "instruction", "query") if isinstance(row.get(f), str)), None)
        if text is None:
            raise UsageError(f"{source}: line {row['_line']} has no 'prompt', 'instruction' or 'query' text")
        if text.strip():
            out.append(text.strip())
    return out


def run(ctx: StageContext, instructions: Path | None, count: int | None, model: str) -> Path:
    if done := finished(ctx, NAME):
        return done
    source = instructions or ctx.iter_dir / "instructions"
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory (run step0 for --iter {ctx.args.iter}, "
                         f"or pass --instructions FILE)")
    prompts = load_instructions(source)[:count]
    if not prompts:
        raise UsageError(f"{source}: no instructions")
    templates = load_templates(ctx.flavour.dir)
    ctx.check_model_served(model)
    context = context_length(ctx.args.base_model)
    items = {stable_key(p): p for p in prompts}
    columns = ["prompt", "plan", "sections", "agentwrite_response"]
    journal = Journal(journal_path(ctx, NAME))
    try:
        return run_stage(ctx, NAME, items, make_work(ctx, model, journal, templates, context), columns=columns,
                         rows_of=lambda recs: [{c: r[c] for c in columns} for r in recs], length_column=None,
                         model=model, journal=journal, types={"sections": "int64"})
    finally:
        journal.close()


def parser():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--instructions", default=None,
                   help="a JSONL of instructions or a dataset dir (default: step0's of --iter)")
    p.add_argument("--count", type=positive_int, default=None, help="only the first N instructions")
    p.add_argument("--model", default="base", help="the served model that plans and writes (default: base)")
    return p


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parser().parse_args(argv)
    ctx = StageContext.create(args, flavour_dir)
    run(ctx, Path(args.instructions).resolve() if args.instructions else None, args.count, args.model)
