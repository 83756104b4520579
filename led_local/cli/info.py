"""``info``: what led-local sees in a model file."""

from __future__ import annotations

import json

import click

from led_local.cli.common import main, model_argument, user_errors


@main.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def info(model: str, as_json: bool) -> None:
    """Describe MODEL: architecture, sizes, LM head, chat template, capture and projection paths."""
    from led_local.decoding.chatformat import describe
    from led_local.llama.capture import capture_path
    from led_local.llama.gguf_info import inspect_model
    from led_local.llama.projection import depth_precision, projection_path

    m = inspect_model(model)
    record = {
        "name": m.name, "architecture": m.architecture, "blocks": m.n_layer,
        "nextn_layers": m.n_nextn, "memory": m.memory, "width": m.n_embd,
        "vocabulary": m.n_vocab, "lm_head": m.head_tensor, "lm_head_type": m.head_type,
        "tied": m.tied, "chat_template": bool(m.chat_template), "led_supported": m.led_supported,
        "led_depths": _depths(m), "capture": capture_path(m),
        "projection": projection_path(m), "depth_precision": depth_precision(m),
        "final_softcap": m.final_softcap or None,
        "head_memory_mb": round(m.gguf.tensors[m.head_tensor].n_bytes / 1e6, 1),  # as stored
        **describe(m),  # reasoning_format, thinking, thinking_switch
    }
    if as_json:
        click.echo(json.dumps(record))
        return
    for key, value in record.items():
        click.echo(f"{key:16} {value}")


def _depths(m) -> str | None:
    """The blocks whose outputs LED's default depths read (after the trunk's last block, the
    NextN layers are never read), or None when LED cannot run on the model."""
    from led_local.decoding.samplers import LEDConfig
    from led_local.errors import LedError

    d = LEDConfig().depths
    try:
        m.check_led(d)
    except LedError:
        return None
    hs = m.led_hidden_indices(d)
    return f"{m.block_output}-{hs[-1] - 1}..{m.block_output}-{hs[0] - 1} (d={d})"
