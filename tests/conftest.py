"""Shared fixtures: the bundled real models (fetched by `make models`).

Every test that uses a real model, directly or through another fixture, is marked ``slow``
here, so ``make test-fast`` (``pytest -m "not slow"``) runs without the models."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"


REAL_MODEL_FIXTURES = frozenset({"smollm2", "gemma3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that takes a real-model fixture, or is parametrized over their
    names to fetch one with ``request.getfixturevalue``."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        named = {p for p in params if isinstance(p, str)}
        if REAL_MODEL_FIXTURES.intersection({*getattr(item, "fixturenames", ()), *named}):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def split_problems(tmp_path_factory) -> Path:
    """Four problems falling into shards 0, 1, 2 and 2 of 3 (see evalruns)."""
    import evalruns

    return evalruns.write_problems(tmp_path_factory.mktemp("split") / "problems.jsonl")


@pytest.fixture(scope="session")
def single_run(smollm2, split_problems, tmp_path_factory) -> list[dict]:
    """The records of one ordinary LED solve of ``split_problems``: what every split of the
    run must reproduce."""
    import evalruns

    return evalruns.solve(smollm2, split_problems, tmp_path_factory.mktemp("single") / "r.jsonl")
