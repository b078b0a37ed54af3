"""Shared fixtures. Heavy things (the converted model, a served stack) are built once per session."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE_PY = ROOT / ".venv" / "bin" / "python"
TRAIN_PY = ROOT / ".venv-train" / "bin" / "python"

sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def default_model() -> Path:
    from self_lengthen.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
