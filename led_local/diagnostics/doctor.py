"""``led-local doctor``: whether this installation works, and why not, one check at a time.

The build's checks are in ``build``. With a model: its metadata (architecture, blocks, LED
depths, LM head, capture path), a short greedy LED decode through every capture path the
build and architecture offer (they must agree token for token) and the projection check
(led-local's LM head on llama.cpp's final hidden state must reproduce llama.cpp's logits).
An unreadable model file (missing, not GGUF, truncated) stays a LedError, not a failed check.
The llama side is imported inside the checks: a llama-cpp-python that does not load is then a
failed check (``build_checks``), not an ImportError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from led_local.diagnostics.build import Check, build_checks, to_json
from led_local.errors import LedError

__all__ = ["Check", "run_doctor", "to_json"]

PROMPT = "The capital of France is Paris. The capital of Italy is"
DECODE_TOKENS = 6
# largest |led-local's projection - llama.cpp's logits| accepted, as a fraction of the span of
# llama.cpp's logits: both use the same quantized head and ggml kernels, so what is left is
# the final norm's rounding (0 on the bundled models)
PROJECTION_TOLERANCE = 1e-2
CAPTURES = ("auto", "callback", "layer-inp")


def run_doctor(model: str | Path | None = None, *, capture: str = "auto",
               threads: int | None = None) -> list[Check]:
    """The build's checks, then the model's when ``model`` is given.

    capture: the capture path that must work: auto (default), callback or layer-inp (a
    failure where the build or the architecture lacks it). Raises LedError for an unreadable
    model file.
    """
    if capture not in CAPTURES:
        raise LedError(f"`capture` must be one of {', '.join(CAPTURES)}, got {capture!r}")
    checks = build_checks(capture=capture)
    if model is not None and len(checks) > 1:  # one check only: llama-cpp-python won't load
        checks += model_checks(model, capture=capture, threads=threads)
    return checks


def model_checks(model: str | Path, *, capture: str = "auto",
                 threads: int | None = None) -> list[Check]:
    """Metadata checks, then the decode and projection checks (skipped for an architecture
    LED does not support). Raises LedError for an unreadable file."""
    from led_local.llama.gguf_info import LED_ARCHITECTURES, inspect_model

    info = inspect_model(model)
    value = {"name": info.name, "architecture": info.architecture, "blocks": info.n_layer,
             "width": info.n_embd, "vocabulary": info.n_vocab}
    if not info.led_supported:
        return [Check("model", False, f"architecture '{info.architecture}' is not supported for "
                      f"LED (supported: {', '.join(sorted(LED_ARCHITECTURES))})", value)]
    checks = [Check("model", True, f"{info.name}: {info.architecture}, {info.n_layer} blocks, "
                    f"width {info.n_embd}, vocabulary {info.n_vocab}", value)]
    checks += [depths_check(info), head_check(info), chat_check(info),
               capture_check(info, capture)]
    checks += [decode_check(info, threads=threads), projection_check(info, threads=threads)]
    return checks


def depths_check(info) -> Check:
    """LED's default depth count fits the model; which hidden states it reads."""
    from led_local.decoding.samplers import LEDConfig

    d = LEDConfig().depths
    try:
        info.check_led(d)
    except LedError as e:
        # doctor reports to the command line: options as their flags
        flags = e.render(lambda name: "--" + name.replace("_", "-"))
        return Check("led-depths", False, f"the default --led-depths {d} does not fit: {flags}")
    hs = info.led_hidden_indices(d)
    return Check("led-depths", True, f"d={d}: the final layer plus hidden states {hs[0]}..{hs[-1]}"
                 f" (l_out-{hs[0] - 1}..l_out-{hs[-1] - 1})", hs)


def head_check(info) -> Check:
    """The LM head's tensor, quant type and the extras led-local applies after it."""
    extras = [name for name, on in (("output bias", info.has_output_bias),
                                    (f"logit scale {info.logit_scale:g}", info.logit_scale != 1),
                                    (f"soft-cap {info.final_softcap:g}", info.final_softcap))
              if on]
    norm = "LayerNorm" if info.norm_is_layernorm else "RMSNorm"
    return Check("head", True, f"{info.head_tensor} {info.head_type}"
                 f"{' (tied to the embeddings)' if info.tied else ''}, final {norm}"
                 f"{', ' + ', '.join(extras) if extras else ''}",
                 {"tensor": info.head_tensor, "type": info.head_type, "tied": info.tied})


def chat_check(info) -> Check:
    """The chat format, where the template's prompt leaves thinking, and its switches."""
    from led_local.decoding.chatformat import describe

    d = describe(info)
    if d["thinking_switch"] is None:
        return Check("chat", True, "no chat template (chat-shaped prompts need "
                     "--chat-template)", d)
    return Check("chat", True, f"format {d['reasoning_format']}; thinking "
                 f"{d['thinking']}; switches: {d['thinking_switch']}", d)


def layer_inp_unavailable(info) -> str | None:
    """Why ``--capture layer-inp`` cannot run on this build and model, or None."""
    from led_local.llama import native
    from led_local.llama.gguf_info import LAYER_INP_ARCHITECTURES

    if native.layer_inp_patch_version() is None:
        return "this llama.cpp is stock (no layer-input export patch)"
    if info.architecture not in LAYER_INP_ARCHITECTURES:
        return (f"architecture '{info.architecture}' does not register its block inputs "
                f"(layer-inp: {', '.join(sorted(LAYER_INP_ARCHITECTURES))})")
    return None


def capture_check(info, capture: str) -> Check:
    """Which path ``auto`` picks; a failure when ``capture`` asks for one that cannot run."""
    from led_local.llama.capture import capture_path

    why = layer_inp_unavailable(info)
    if capture == "layer-inp" and why:
        return Check("capture", False, f"--capture layer-inp is unavailable: {why}")
    picked = capture_path(info)
    return Check("capture", True, f"auto picks {picked}"
                 + (f"; layer-inp unavailable: {why}" if why else ""), picked.split()[0])


def decode_check(info, *, threads: int | None = None) -> Check:
    """Greedy LED that always explores (every token read from the captured depths), a few
    tokens through each available capture path: tokens and chosen depths must agree."""
    from led_local.decoding import led
    from led_local.decoding.engine import Engine
    from led_local.decoding.generate import generate
    from led_local.decoding.methods import DecodeConfig
    from led_local.decoding.samplers import LEDConfig

    if info.n_layer < 3:
        return Check("decode", False, f"LED needs at least 3 blocks, the model has "
                     f"{info.n_layer}")
    d = min(LEDConfig().depths, info.n_layer - 1)
    cfg = DecodeConfig(method=led.NAME, temperature=0.0, think_end="",
                       led=LEDConfig(temperature=0.0, depths=d, exploit=False))
    paths = ["callback"] + ([] if layer_inp_unavailable(info) else ["layer-inp"])
    runs = {}
    for path in paths:
        try:
            with Engine(info, cfg, n_ctx=256, threads=threads, capture=path) as engine:
                runs[path] = generate(engine, engine.rt.tokenize(PROMPT),
                                      max_tokens=DECODE_TOKENS, seed=0)
        except (LedError, RuntimeError) as e:
            return Check("decode", False, f"greedy LED through {path} failed: {e}")
    ref = runs["callback"]
    for path in paths[1:]:
        got = runs[path]
        if got.tokens != ref.tokens or got.depths != ref.depths:
            i = next((i for i, (a, b) in enumerate(zip(got.tokens, ref.tokens)) if a != b),
                     min(len(got.tokens), len(ref.tokens)))
            return Check("decode", False, f"{path} and callback disagree from token {i}: "
                         f"{got.tokens[i:]} vs {ref.tokens[i:]} (depths {got.depths} vs "
                         f"{ref.depths})", {p: r.tokens for p, r in runs.items()})
    return Check("decode", True, f"{len(ref.tokens)} greedy LED tokens (d={d}, always "
                 f"exploring) agree through {' and '.join(paths)}: {ref.text!r}",
                 {p: r.tokens for p, r in runs.items()})


def projection_check(info, *, threads: int | None = None) -> Check:
    """led-local's head applied to llama.cpp's final state (with the final norm) against
    llama.cpp's logits, every prompt position: the same top-1 and a max difference within
    PROJECTION_TOLERANCE of the logits' span."""
    from led_local.llama.capture import CallbackCapture
    from led_local.llama.head import LMHead
    from led_local.llama.runtime import Runtime, default_threads

    cap = CallbackCapture([info.n_layer], info.n_embd, architecture=info.architecture)
    try:
        with Runtime(info.path, n_ctx=256, n_threads=threads, eval_callback=cap.callback,
                     info=info) as rt:
            tokens = rt.tokenize(PROMPT)
            n = len(tokens)
            cap.begin(np.arange(n))
            rt.decode(tokens, range(n), [0] * n, [True] * n)
            states = cap.collect()[:, 0]
            ref = np.stack([rt.logits(i) for i in range(n)])
        head = LMHead(info, threads=threads or default_threads())
        try:
            # llama.cpp's own product (its 8-bit activation rounding included): the same
            # bytes through the same kernels must give the same logits
            ours = head.project(states, norm=True, exact=False)
        finally:
            head.close()
    except (LedError, RuntimeError, ValueError) as e:
        return Check("projection", False, f"the final state could not be projected: {e}")
    diff = float(np.abs(ours - ref).max())
    span = float(ref.max() - ref.min())
    wrong = int((ours.argmax(1) != ref.argmax(1)).sum())
    value = {"positions": n, "top1_mismatches": wrong, "max_abs_diff": diff, "span": span}
    problems = [f"top-1 differs at {wrong} of {n} positions"] if wrong else []
    if not diff <= PROJECTION_TOLERANCE * span:
        problems.append(f"max abs difference {diff:.3g} exceeds {PROJECTION_TOLERANCE:g} of "
                        f"the logits' span {span:.3g}")
    if problems:
        return Check("projection", False, "led-local's head projection does not reproduce "
                     f"llama.cpp's logits ({'; '.join(problems)}): LED's depths would be "
                     "projected wrongly", value)
    return Check("projection", True, f"same top-1 at all {n} positions, max abs difference "
                 f"{diff:.2g} (logits span {span:.3g})", value)
