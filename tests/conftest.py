"""Shared fixtures: the bundled real models (fetched by `make models`)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


def _model(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.name} is missing: run `make models`")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return _model(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3() -> Path:
    return _model(GEMMA3)
