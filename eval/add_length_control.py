"""Turn long.jsonl (query, response) into length-controlled SFT data: each query is rewritten by the served LLM to
ask for the length its response actually has.

Usage: python eval/add_length_control.py long.jsonl --output long_lc.jsonl [--min_words 2000] [--max_words 8000]
       [--seed 0] [--model base] [--base_url URL] [--workers 8]

Rows with min_words <= words < max_words are kept. Each gets a constraint type in the method's proportions
(about 40%, range 25%, above 10%, below 25%) and a round target (to 1000, or to 2000 one time in five, clamped to
the bounds) that its response satisfies. Chinese constraints use Chinese numerals half of the time. A rewrite that
loses the constraint falls back to appending it to the query (with `--no_llm`, every query does). Each LLM rewrite
is checkpointed as it arrives (OUTPUT.checkpoint.jsonl): a rerun after a kill asks only for what is missing. OUTPUT
is written once, at the end.
"""
import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.io import Checkpoint, output_file, read_jsonl, write_jsonl_atomic  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main, positive_int  # noqa: E402
from self_lengthen.evaluation import band, int_to_zh, length_score, parse_numbers  # noqa: E402
from self_lengthen.stages.runner import run_items  # noqa: E402
from self_lengthen.text import count_words, is_cjk  # noqa: E402

PROPORTIONS = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
CONSTRAINT_TEXT = {
    "en": {"about": "about {x} words", "range": "between {a} and {b} words",
           "above": "at least {x} words", "below": "no more than {x} words"},
    # above = at least (不少于), below = at most (不超过)
    "zh": {"about": "{x}字左右", "range": "{a}到{b}字", "above": "不少于{x}字", "below": "不超过{x}字"},
}
REWRITE_INSTRUCTION = {
    "en": ("Rewrite the writing request below so that it also asks for a length of {constraint}. Keep everything "
           "else it asks for. Reply with the rewritten request only.\n\nRequest: {query}"),
    "zh": ("请改写下面的写作要求，使它同时要求篇幅为“{constraint}”，其余要求保持不变。只输出改写后的要求。\n\n"
           "要求：{query}"),
}


def choose_type(rng: random.Random) -> str:
    return rng.choices(list(PROPORTIONS), weights=list(PROPORTIONS.values()))[0]


def targets(kind: str, words: int, unit: int, lo: int, hi: int) -> tuple[int, ...]:
    """Round numbers for `kind` whose band contains `words`."""
    clamp = lambda v: min(max(v, lo), hi)  # noqa: E731
    down, up = clamp(words // unit * unit), clamp(-(-words // unit) * unit)
    if kind == "about":  # the nearest round number whose +-20% band holds the length
        candidates = sorted({clamp(int(round(words / unit)) * unit), down, up}, key=lambda x: abs(x - words))
        return next(((x,) for x in candidates if 0.8 * x <= words <= 1.2 * x), (candidates[0],))
    if kind == "range":
        return (down, up if up > down else down + unit)
    if kind == "above":
        return (down,)
    return (up,)


def make_constraint(kind: str, words: int, lang: str, rng: random.Random, lo: int, hi: int) -> tuple[str, tuple]:
    """The constraint text and its numbers; the response's length always lies inside the band."""
    units = [2000, 1000] if rng.random() < 0.2 else [1000]
    for unit in units:
        numbers = targets(kind, words, unit, lo, hi)
        if all(n > 0 for n in numbers) and (kind != "range" or numbers[0] < numbers[1]):
            a, b = (numbers + numbers)[:2]
            nums = {"x": a, "a": a, "b": b}
            if lang == "zh" and rng.random() < 0.5:
                nums = {k: int_to_zh(v) for k, v in nums.items()}
            text = CONSTRAINT_TEXT[lang][kind].format(**nums)
            b_lo, b_hi = band(kind, text)
            if length_score(words, b_lo, b_hi) == 1.0:
                return text, numbers
    raise ValueError(f"no round {kind} target fits {words} words")


def rewrite(client: Client | None, model: str, query: str, constraint: str, numbers: tuple, lang: str) -> tuple[str, str]:
    if client is not None:
        prompt = REWRITE_INSTRUCTION[lang].format(constraint=constraint, query=query)
        text = client.chat(model, [{"role": "user", "content": prompt}], temperature=0.3, max_tokens=512).text.strip()
        if text and set(numbers) <= set(parse_numbers(text)):
            return text, "llm"
    joiner = " " if lang == "en" else ""
    suffix = f"The answer should be {constraint}." if lang == "en" else f"篇幅要求：{constraint}。"
    return f"{query.rstrip()}{joiner}{suffix}", "template"


def build(rows: list[dict], *, seed: int, lo: int, hi: int) -> list[dict]:
    """The deterministic part: which rows, which type, which constraint."""
    rng = random.Random(seed)
    planned = []
    for row in rows:
        words = count_words(row["response"])
        if not lo <= words < hi:
            continue
        lang = "zh" if is_cjk(row["query"] + row["response"]) else "en"
        kind = choose_type(rng)
        constraint, numbers = make_constraint(kind, words, lang, rng, lo, hi)
        planned.append({"query": row["query"], "response": row["response"], "lang": lang, "type": kind,
                        "constraint": constraint, "numbers": numbers, "words": words})
    return planned


def rewrite_all(planned: list[dict], client: Client | None, model: str, output: Path, workers: int) -> list[dict]:
    """The rewritten rows, in order. Each LLM rewrite is checkpointed as it arrives (OUTPUT.checkpoint.jsonl), keyed
    by its position and content, so a rerun after a kill asks only for what is missing, and a changed plan (other
    input, seed or bounds) reuses nothing stale."""
    def key(i: int, item: dict) -> str:
        content = json.dumps([item["query"], item["constraint"], model], ensure_ascii=False)
        return f"{i:07d}-{hashlib.sha1(content.encode()).hexdigest()[:12]}"

    items = {key(i, item): item for i, item in enumerate(planned)}

    def rewritten(item: dict) -> dict:
        query, how = rewrite(client, model, item["query"], item["constraint"], item["numbers"], item["lang"])
        return {"query": query, "rewritten_by": how}

    if client is None:  # by template: instant and asks nothing remote, so there is nothing to checkpoint
        done = {k: rewritten(item) for k, item in items.items()}
    else:
        def work(_key, item, stop):
            return None if stop.is_set() else {"status": "accepted", **rewritten(item)}

        checkpoint = Checkpoint(output.with_name(output.name + ".checkpoint.jsonl"))
        try:
            done = {r["key"]: r for r in run_items(items, work, checkpoint, workers=workers, desc="rewrite")}
        finally:
            checkpoint.close()
    return [{"query": done[k]["query"], "response": item["response"], "type": item["type"],
             "constraint": item["constraint"], "lang": item["lang"], "rewritten_by": done[k]["rewritten_by"]}
            for k, item in items.items()]


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--output", required=True)
    p.add_argument("--min_words", type=int, default=2000)
    p.add_argument("--max_words", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="base")
    p.add_argument("--base_url", default=None)
    p.add_argument("--workers", type=positive_int, default=8, help="rewrite requests in flight")
    p.add_argument("--no_llm", action="store_true", help="append the constraint instead of asking the LLM")
    args = p.parse_args(argv)
    if not 0 < args.min_words < args.max_words:
        raise UsageError(f"need 0 < --min_words ({args.min_words}) < --max_words ({args.max_words})")
    out = output_file(args.output, "--output")
    rows = read_jsonl(args.file, required=("query", "response"))
    planned = build(rows, seed=args.seed, lo=args.min_words, hi=args.max_words)
    client = None if args.no_llm else Client(args.base_url)
    written = rewrite_all(planned, client, args.model, out, args.workers)
    write_jsonl_atomic(out, written)
    by_llm = sum(r["rewritten_by"] == "llm" for r in written)
    print(f"kept {len(planned)} of {len(rows)} rows ({args.min_words} <= words < {args.max_words}); rewritten by "
          f"the LLM: {by_llm}, by template: {len(written) - by_llm} -> {out}")


if __name__ == "__main__":
    main()
