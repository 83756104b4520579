"""The tiny generated GGUF: llama.cpp loads it, and its logits agree with tinymodel.forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from tinymodel import SPACE, TinyModel, forward, write_tiny_llama

TEXT = b"hello world, the answer is 42."


@pytest.fixture(scope="module")
def llama_cpp() -> ModuleType:
    """The llama_cpp module, or a skip when llama-cpp-python is not installed."""
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@contextlib.contextmanager
def loaded(llama_cpp: ModuleType, model: TinyModel, *, exact: bool = False) -> Iterator[object]:
    """A llama_cpp.Llama over ``model`` keeping logits for every position, closed on exit.

    exact: F32 KV cache and no flash attention (whose CPU kernel rounds through F16), so
    llama.cpp computes in F32 throughout; default False keeps llama.cpp's defaults.
    """
    options: dict[str, object] = {}
    if exact:
        f32 = llama_cpp.GGML_TYPE_F32
        options = {"type_k": f32, "type_v": f32, "flash_attn": False}
    llm = llama_cpp.Llama(
        model_path=str(model.path), logits_all=True, n_ctx=64, n_threads=2, verbose=False,
        **options,
    )
    try:
        yield llm
    finally:
        llm.close()


def test_forward_shapes_and_nondegenerate_logits(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    tokens = [1, 5, 300, 301, 77, 9]
    hidden, logits = forward(model, tokens)
    assert len(hidden) == model.n_layer
    assert all(h.shape == (len(tokens), model.n_embd) for h in hidden)
    assert logits.shape == (len(tokens), model.n_vocab)
    assert np.all(np.isfinite(logits))
    # Activations stay O(1) and each position has a clear, but not one-hot, favourite.
    assert all(0.1 < h.std() < 10 for h in hidden)
    spread = logits.max(axis=-1) - np.median(logits, axis=-1)
    assert np.all((spread > 1.0) & (spread < 20.0))
    assert len(set(logits.argmax(axis=-1).tolist())) > 1


def test_forward_is_causal(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    full_hidden, full_logits = forward(model, [1, 10, 20, 30, 40])
    part_hidden, part_logits = forward(model, [1, 10, 20])
    np.testing.assert_allclose(full_logits[:3], part_logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(full_hidden[-1][:3], part_hidden[-1], rtol=1e-12, atol=1e-12)


def test_tokenizer_and_metadata(tmp_path: Path, llama_cpp: ModuleType) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    with loaded(llama_cpp, model) as llm:
        tokens = llm.tokenize(TEXT, add_bos=True)
        assert tokens[0] == llm.token_bos() == 1
        assert llm.token_eos() == 2
        assert llm.n_vocab() == model.n_vocab
        # Whole-word pieces win over the letters they merge from.
        words = [model.tokens[t] for t in tokens[1:]]
        assert SPACE + "hello" in words and SPACE + "answer" in words
        assert llm.detokenize(tokens[1:]).strip() == TEXT
        assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
        im_start = llm.tokenize(b"<|im_start|>user", add_bos=False, special=True)
        assert model.tokens[im_start[0]] == "<|im_start|>"


def llama_cpp_logits(
    llama_cpp: ModuleType, model: TinyModel, *, exact: bool
) -> tuple[list[int], np.ndarray]:
    """(tokens of TEXT with BOS, llama.cpp's logits for every position as float64)."""
    with loaded(llama_cpp, model, exact=exact) as llm:
        tokens = llm.tokenize(TEXT, add_bos=True)
        llm.eval(tokens)
        return tokens, np.array(llm.scores[: len(tokens)], dtype=np.float64)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_cpp_logits_match_numpy(tmp_path: Path, llama_cpp: ModuleType, tied: bool) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", tied=tied, seed=1)
    tokens, got = llama_cpp_logits(llama_cpp, model, exact=True)
    assert len(tokens) >= 8
    _, want = forward(model, tokens)
    np.testing.assert_array_equal(got.argmax(axis=-1), want.argmax(axis=-1))
    # All-F32 on both sides: measured ~1e-6 absolute on logits of magnitude ~4..16.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_llama_cpp_default_settings_close_to_numpy(tmp_path: Path, llama_cpp: ModuleType) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=1)
    tokens, got = llama_cpp_logits(llama_cpp, model, exact=False)
    _, want = forward(model, tokens)
    np.testing.assert_array_equal(got.argmax(axis=-1), want.argmax(axis=-1))
    # The default F16 KV cache costs ~1e-3 absolute (measured 1.6e-3 here).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
