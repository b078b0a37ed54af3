"""Profiles: the sizes of a run (generation, training, collection) in one YAML file, checked whole when loaded.

`--profile` takes a shipped name (self_lengthen/profiles/NAME.yaml) or a path to a YAML file of the same shape. A
field that is unknown, of the wrong type or out of range is one line naming the field and what it takes, before
anything starts.
"""
import math
from pathlib import Path

import yaml

from .errors import UsageError

PROFILES = Path(__file__).resolve().parent / "profiles"
STAGES = ("self_instruct", "generate", "extend")


def profile_name(requested: str | None, gpus: int) -> str:
    """The profile asked for, else `gpu` on a node with GPUs and `cpu-demo` without."""
    return requested or ("gpu" if gpus else "cpu-demo")


# -- the checks: each a predicate and the words for what it accepts ------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


POSITIVE_INT = (_positive_int, "a positive whole number")
NON_NEGATIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number, 0 or more")
POSITIVE = (lambda v: _number(v) and v > 0, "a positive number")
NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "a number, 0 or more")
FRACTION = (lambda v: _number(v) and 0 < v <= 1, "a number above 0 and at most 1")
BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
TEXT = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


# What a field of the method's sampling (client.DEFAULT_SAMPLING) may be replaced with: vLLM's own ranges.
SAMPLING_RANGES = {
    "temperature": NON_NEGATIVE,
    "top_p": FRACTION,
    "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= -1,
              "a whole number: -1 or 0 (off), or 1 or more"),
    "repetition_penalty": POSITIVE,
}


def sampling_problem(fields: dict) -> str | None:
    """What is wrong with fields that replace the method's sampling (None: nothing): an unknown field, or a value
    that is not a number in its range."""
    for key, value in fields.items():
        if key not in SAMPLING_RANGES:
            return f"unknown field {key!r} (known: {', '.join(SAMPLING_RANGES)})"
        ok, words = SAMPLING_RANGES[key]
        if not ok(value):
            return f"{key}={value!r} is not {words}"
    return None


def parse_sampling(text: str) -> dict:
    """'temperature=1,top_k=-1' -> {'temperature': 1.0, 'top_k': -1}: a stage's --sampling (a profile's
    generation.sampling for one stage), the fields that replace the method's (top_k -1 or 0: off)."""
    fields = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        try:
            fields[key] = int(value) if key == "top_k" else float(value)
        except ValueError:
            fields[key] = value
    problem = sampling_problem(fields)
    if problem:
        raise UsageError(f"sampling {text!r}: {problem} (write FIELD=NUMBER,...)")
    return fields


def optional(check):
    ok, words = check
    return (lambda v: v is None or ok(v), f"null or {words}")


def per_stage(check, stages=STAGES) -> dict:
    return {stage: check for stage in stages}


MAX_TOKENS = (lambda v: _positive_int(v) or (isinstance(v, dict) and set(v) == set(STAGES)
                                             and all(_positive_int(x) for x in v.values())),
              f"a positive whole number, or a mapping of {', '.join(STAGES)} to one each")

SAMPLING = (lambda v: isinstance(v, dict) and bool(v) and sampling_problem(v) is None,
            "a mapping of some of " + "; ".join(f"{field} to {words}" for field, (_, words) in SAMPLING_RANGES.items()))

# Every field a profile may have. A mapping is a section (its fields checked in turn); a tuple is a value.
SCHEMA = {
    "generation": {
        "max_tokens": MAX_TOKENS,
        "workers": optional(POSITIVE_INT),
        "max_tries": per_stage(POSITIVE_INT),
        "judge_parse": (lambda v: v in ("strict", "lenient"), "strict or lenient"),
        "extend_attempts": optional(POSITIVE_INT),
        "extend_stop_when_grown": BOOLEAN,  # a try ends once past 1.2x (not the method's: it runs 3 rounds)
        "drop_short": per_stage(BOOLEAN, ("generate", "extend")),
        "finish_fraction": per_stage(FRACTION),
        "keep_in_flight": per_stage(BOOLEAN, ("generate", "extend")),  # past finish_fraction (not the method's)
        "time_budget": per_stage(POSITIVE),  # minutes
        "sampling": per_stage(SAMPLING, ("generate", "extend")),  # replaces the method's; the held-out step keeps it
        "heldout": optional(POSITIVE_INT),  # held-out instructions the Generator answers each iteration; null: all
    },
    # Passed to LLaMA-Factory (lora_rank, bf16, deepspeed, gradient_checkpointing and save_steps through our rules).
    "training": {
        "cutoff_len": POSITIVE_INT,
        "num_train_epochs": POSITIVE,
        "max_steps": POSITIVE_INT,
        "max_samples": POSITIVE_INT,
        "per_device_train_batch_size": POSITIVE_INT,
        "gradient_accumulation_steps": POSITIVE_INT,
        "learning_rate": POSITIVE,
        "lr_scheduler_type": TEXT,
        "warmup_steps": NON_NEGATIVE,
        "lora_rank": POSITIVE_INT,
        "gradient_checkpointing": BOOLEAN,
        "bf16": BOOLEAN,
        "deepspeed": BOOLEAN,
        "save_steps": optional(POSITIVE_INT),
    },
    "collect": {"total_count": NON_NEGATIVE_INT},
    "barrier_timeout": (POSITIVE[0], "a positive number of seconds"),
}
REQUIRED = {"generation", "generation.max_tokens", "training"}


def problems(value, schema, path: str = "") -> list[str]:
    """What is wrong with `value` against `schema`, one line each (empty: nothing)."""
    if isinstance(schema, tuple):
        ok, words = schema
        return [] if ok(value) else [f"{path}={value!r} is not {words}"]
    if not isinstance(value, dict):
        return [f"{path or 'the profile'} must be a mapping of {', '.join(schema)}, not {value!r}"]
    out = []
    for key in value:
        if key not in schema:
            where = f"{path}.{key}" if path else str(key)
            out.append(f"unknown field {where} (known{' in ' + path if path else ''}: {', '.join(schema)})")
    for key, sub in schema.items():
        where = f"{path}.{key}" if path else key
        if key in value:
            out += problems(value[key], sub, where)
        elif where in REQUIRED:
            out.append(f"{where} is missing")
    return out


def load_profile(name: str) -> dict:
    """The profile `name` (a shipped name or a YAML file), checked against SCHEMA."""
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise UsageError(f"--profile={name}: unknown profile (known: {known}, or a path to a YAML file)")
    try:
        profile = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"profile {name}: not valid YAML{where}; fix the file") from None
    found = problems(profile, SCHEMA)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UsageError(f"profile {name}: {found[0]}{more}")
    return profile
