"""Small file helpers: JSONL input with clear errors, atomic JSON output, model dirs that appear whole."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


@contextmanager
def model_dir_in_place(out: Path):
    """Yields a temp dir beside `out` to write a model into, then renames it to `out`: a finished model dir appears
    whole, or not at all. If another process finished the same `out` first (its config.json is there), that one is
    kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".partial-"))
    try:
        yield tmp
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl(path, required: tuple[str, ...] = (), allow_empty: bool = False) -> list[dict]:
    """Rows (JSON objects, with their line number as `_line`) of a JSONL file. A missing file, a line that is not
    a JSON object or lacks a required field, or (unless allowed) an empty file gets one clear error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UsageError(f"{path}: line {n} is not valid JSON") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}: line {n} is not a JSON object")
        missing = [k for k in required if row.get(k) is None]
        if missing:
            raise UsageError(f"{path}: line {n} has no {', '.join(repr(k) for k in missing)}")
        rows.append({**row, "_line": n})
    if not rows and not allow_empty:
        raise UsageError(f"{path}: no rows")
    return rows


def dataset_prompts(source: Path, option: str) -> list[str]:
    """The non-empty `prompt` texts of a dataset dir written by `datasets.save_to_disk`; `option` names the
    command-line option in the one-line error for a dir that is not such a dataset or has no `prompt` column."""
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(source))
    except Exception as exc:  # datasets raises several types for a dir that is not a dataset
        raise UsageError(f"{option} {source}: not a dataset saved with save_to_disk ({exc})") from None
    if "prompt" not in data.column_names:
        raise UsageError(f"{option} {source}: the dataset has no 'prompt' column (columns: {data.column_names})")
    return [p for p in data["prompt"] if isinstance(p, str) and p.strip()]
