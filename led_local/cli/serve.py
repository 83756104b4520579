"""``serve``: an OpenAI-compatible HTTP server over a model, decoding with LED."""

from __future__ import annotations

import click

from led_local.cli.common import (
    decode_config,
    decoding_options,
    main,
    model_argument,
    model_with_template,
    reasoning_format_option,
    user_errors,
)


@main.command()
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
@click.option("-P", "--parallel", type=int, default=4, show_default=True,
              help="Sequences decoded together (slots); more requests wait in a queue.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Most requests waiting for a slot; beyond it the answer is 503.")
@click.option("--api-key", default=None, envvar="LED_LOCAL_API_KEY",
              help="Require 'Authorization: Bearer KEY' [env LED_LOCAL_API_KEY].")
@reasoning_format_option("the reasoning goes to reasoning_content")
@click.option("--alias", default=None, help="Model name in the API [default: the file's name].")
@decoding_options()
@click.pass_context
@user_errors
def serve(ctx: click.Context, model: str, host: str, port: int, parallel: int, max_queue: int,
          api_key: str | None, reasoning_format: str | None, alias: str | None, **kw) -> None:
    """Serve MODEL over the OpenAI HTTP API (chat/completions, completions, models).

    The decoding options are the defaults of requests that do not set their own; --ctx is
    each slot's context."""
    from led_local.serve.server import serve as run

    cfg = decode_config(ctx, kw)
    run(model_with_template(model, kw["chat_template"]), cfg, host=host, port=port,
        parallel=parallel, ctx=kw["n_ctx"],
        max_queue=max_queue, api_key=api_key, reasoning_format=reasoning_format, alias=alias,
        threads=kw["threads"], capture=kw["capture"], projection=kw["projection"],
        verbose=kw["verbose"])
