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
    from led_local.llama.projection import projection_path

    m = inspect_model(model)
    record = {
        "name": m.name, "architecture": m.architecture, "blocks": m.n_layer, "width": m.n_embd,
        "vocabulary": m.n_vocab, "lm_head": m.head_tensor, "lm_head_type": m.head_type,
        "tied": m.tied, "chat_template": bool(m.chat_template), "led_supported": m.led_supported,
        "capture": capture_path(m), "projection": projection_path(m),
        "final_softcap": m.final_softcap or None,
        "head_memory_mb": round(m.gguf.tensors[m.head_tensor].n_bytes / 1e6, 1),  # as stored
        **describe(m),  # reasoning_format, thinking, thinking_switch
    }
    if as_json:
        click.echo(json.dumps(record))
        return
    for key, value in record.items():
        click.echo(f"{key:16} {value}")
