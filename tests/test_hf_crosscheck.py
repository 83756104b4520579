"""Optional cross-check of led-local's captured hidden states against Hugging Face transformers.

transformers dequantizes the same GGUF to float32 (``from_pretrained(dir, gguf_file=name)``)
and runs it with ``output_hidden_states=True``; its hidden_states[h] for 1 <= h < L is
llama.cpp's ``l_out-(h-1)`` (LED.md). llama.cpp computes with quantized weights and Q8
activations, so the two agree closely but not bitwise; the thresholds below leave about a 3x
margin over what was measured (worst cosine 0.9967, worst relative L2 0.082 on Gemma 3 270M).

Needs torch, transformers, accelerate and gguf besides led-local and llama-cpp-python, so it
is skipped in the project venv. Run it from a Python that has both, e.g.
  PYTHONPATH=.:.venv/lib/python3.11/site-packages /tmp/hfvenv/bin/python \
      -m pytest -q tests/test_hf_crosscheck.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional HF cross-check: needs torch and transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: all comes from the GGUF
transformers = pytest.importorskip(
    "transformers", reason="optional HF cross-check: needs torch and transformers"
)
pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from led_local.llama import native  # noqa: E402
from led_local.llama.capture import CallbackCapture, LayerInputCapture  # noqa: E402
from led_local.llama.gguf_info import inspect_model  # noqa: E402
from led_local.llama.head import LMHead  # noqa: E402
from led_local.llama.runtime import Runtime  # noqa: E402

pytestmark = pytest.mark.slow  # the bundled real models, through two frameworks

MODELS = Path(__file__).resolve().parents[1] / "models"
TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; "
    "def f(x): return x * 2"
)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def llama_run(info, layers: list[int], capture: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Token ids, states (n, len(layers), n_embd) and logits (n, V) of TEXT, every row an output."""
    if capture == "callback":
        cap = CallbackCapture(layers, info.n_embd, architecture=info.architecture)
    else:
        cap = LayerInputCapture(layers, info.n_embd)
    rt = Runtime(info.path, n_ctx=256, eval_callback=cap.callback, info=info)
    try:
        cap.attach(rt)
        toks = rt.tokenize(TEXT)
        n = len(toks)
        cap.begin(np.arange(n))
        rt.decode(toks, range(n), [0] * n, [True] * n)
        states = cap.collect().copy()
        logits = np.stack([rt.logits(i) for i in range(n)])
    finally:
        rt.close()
    return toks, states, logits


def load_hf(name: str):
    """transformers' model of the GGUF, dequantized to float32. transformers parses the file
    twice (config, then weights), slowly for a 262k vocabulary: one parse serves both here."""
    import gguf

    real, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", reader)
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(MODELS), gguf_file=name, dtype=torch.float32
        ).eval()


@pytest.fixture(
    scope="module", params=["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
)
def case(request) -> dict:
    name = request.param
    if not (MODELS / name).exists():
        pytest.skip(f"{name} not downloaded (make models)")
    info = inspect_model(MODELS / name)
    layers = list(range(1, info.n_layer))  # every intermediate state: LED's and DoLa's
    toks, states, logits = llama_run(info, layers, "callback")
    try:
        model = load_hf(name)
    except Exception as e:  # an architecture or quant type this transformers cannot read
        pytest.skip(f"transformers cannot load {name}: {type(e).__name__}: {e}")
    with torch.no_grad():
        out = model(torch.tensor([toks]), output_hidden_states=True)
    return {
        "info": info,
        "layers": layers,
        "toks": toks,
        "states": states,
        "logits": logits,
        "model": model,
        "hf_states": [h[0].numpy() for h in out.hidden_states],
        "hf_logits": out.logits[0].numpy(),
    }


def test_hidden_states_match_hf(case) -> None:
    info, hf = case["info"], case["hf_states"]
    assert len(hf) == info.n_layer + 1
    assert set(info.led_hidden_indices(8)) <= set(case["layers"])
    for s, h in enumerate(case["layers"]):
        ours, ref = case["states"][:, s], hf[h]
        cos = cosine(ours, ref)
        rel = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() > 0.99, f"h={h}: cosine {cos.min():.5f} at position {cos.argmin()}"
        assert rel.max() < 0.25, f"h={h}: relative L2 {rel.max():.4f} at position {rel.argmax()}"
        assert np.median(rel) < 0.08, f"h={h}: median relative L2 {np.median(rel):.4f}"


def test_capture_paths_agree(case) -> None:
    """The patched build's layer-input export gives the eval callback's states exactly."""
    if native.layer_inp_patch_version() is None:
        pytest.skip("stock llama.cpp: no layer-input export to compare")
    toks, states, logits = llama_run(case["info"], case["layers"], "layer-inp")
    assert toks == case["toks"]
    np.testing.assert_array_equal(states, case["states"])
    np.testing.assert_array_equal(logits, case["logits"])


def test_embedding_state_matches_hf(case) -> None:
    """h = 0, the (scaled) token embeddings, is DoLa's first premature layer on untied models."""
    _, states, _ = llama_run(case["info"], [0], "callback")
    np.testing.assert_allclose(states[:, 0], case["hf_states"][0], rtol=1e-5, atol=1e-5)


def test_logits_match_hf(case) -> None:
    ours, ref = case["logits"], case["hf_logits"]
    assert ours.shape == ref.shape
    top, ref_top = ours.argmax(-1), ref.argmax(-1)
    assert (top == ref_top).mean() >= 0.9
    # where the two disagree it is a near tie: ours is within HF's top 3
    rank = (ref > ref[np.arange(len(top)), top][:, None]).sum(-1)
    assert rank.max() < 3
    assert np.abs(ours - ref).max() < 8.0
    assert cosine(ours, ref).min() > 0.95


def test_lm_head_matches_hf(case) -> None:
    """LMHead (LED's depth logits, ln=0 and ln=1) equals HF's lm_head / final norm."""
    model, info = case["model"], case["info"]
    head = LMHead(info)
    x = case["states"][:, case["layers"].index(info.led_hidden_indices(8)[0])]
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref0 = model.lm_head(t).numpy()
        ref1 = model.lm_head(model.model.norm(t)).numpy()
    for norm, ref in ((False, ref0), (True, ref1)):
        ours = head.project(x, norm=norm)
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale, err_msg=f"ln={norm}")
        assert (ours.argmax(-1) == ref.argmax(-1)).all()
