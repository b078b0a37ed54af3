"""Small file helpers: JSONL input with clear errors; output paths checked before the work; files written whole
(temp, then rename); append-only checkpoints; model dirs that appear whole."""
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temp file beside `path`, then rename it over `path`: a reader sees the old file or the whole new
    one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))


def write_jsonl_atomic(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class Checkpoint:
    """Append-only JSONL of finished records, keyed by `key`. A torn last line (kill -9 mid-write) is dropped."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            raw = path.read_bytes()
            good_end = raw.rfind(b"\n") + 1
            for line in raw[:good_end].splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec
            if good_end < len(raw):  # cut the torn tail so the next append starts on a fresh line
                with open(path, "r+b") as f:
                    f.truncate(good_end)
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        with self._lock:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            self.records[record["key"]] = record

    def close(self):
        self._file.close()


def output_file(text: str, option: str) -> Path:
    """A file the user asked for, checked before any work is done: a path that is a directory, or whose directory
    is missing or not writable, is one line, not a traceback after the work."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    where = path.parent
    if not where.is_dir():
        raise UsageError(f"{option} {path}: there is no directory {where}; create it or give another path")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {where}; give a path you can write to")
    return path


def output_dir(text: str, option: str) -> Path:
    """A directory the user asked for, created if missing and checked before any work is done."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{option} {path}: is a file, not a directory; give a directory") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create it ({exc.strerror}); give another directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in it; give a directory you can write to")
    return path


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
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a JSONL file")
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
