"""``serve``: an OpenAI-compatible HTTP server over a model, decoding with LED."""

from __future__ import annotations

import click

from led_local.cli.common import (
    chat_model,
    decode_config,
    decoding_options,
    main,
    model_argument,
    user_errors,
)


class PrefillChunk(click.ParamType):
    """A number of tokens >= 1, or ``auto`` (None)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if value == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of tokens nor auto", param, ctx)
        if n < 1:
            self.fail(f"must be >= 1, got {n}", param, ctx)
        return n


@main.command()
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8080, show_default=True,
              help="Port to listen on (0: a free one, announced).")
@click.option("-P", "--parallel", type=int, default=4, show_default=True,
              help="Sequences decoded together (slots); more requests wait in a queue.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Most requests waiting beyond the free slots; beyond it the answer is 503.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Require 'Authorization: Bearer KEY', KEY read from this file.")
@click.option("--api-key", default=None, envvar="LED_LOCAL_API_KEY",
              help="Require 'Authorization: Bearer KEY' [env LED_LOCAL_API_KEY; prefer it or "
              "--api-key-file: a flag is visible to every local user].")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Also accept requests whose Host header names NAME (repeatable; '*': any).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Let web pages of ORIGIN (http://host:port, or '*') call the API "
              "(repeatable); other cross-origin requests are refused.")
@click.option("--request-timeout", type=float, default=30.0, show_default=True,
              help="Seconds a connection has to send a whole request (headers and body).")
@click.option("--alias", default=None, help="Model name in the API [default: the file's name].")
@click.option("--prefill-chunk", type=PrefillChunk(), default="auto", show_default=True,
              help="Prompt tokens evaluated between two decode steps (all admitted prompts "
              "together, in one batch), so that a long prompt "
              "does not stall the running streams; auto: what takes ~35 ms at the measured "
              "speed (the whole batch while no stream waits).")
@click.option("-n", "--max-tokens", type=int, default=None,
              help="Most tokens of a reply whose request sets no max_tokens [default: until "
              "the slot's context is full].")
@click.option("-s", "--seed", type=int, default=None,
              help="Seed of the requests that set none [default: a new random one each].")
@decoding_options()
@click.pass_context
@user_errors
def serve(ctx: click.Context, model: str, host: str, port: int, parallel: int, max_queue: int,
          api_key_file: str | None, api_key: str | None, allowed_hosts: tuple[str, ...],
          cors_origins: tuple[str, ...], request_timeout: float,
          alias: str | None, prefill_chunk: int | None, max_tokens: int | None, seed: int | None,
          **kw) -> None:
    """Serve MODEL over the OpenAI HTTP API (chat/completions, completions, models).

    The decoding options are the defaults of requests that do not set their own; --ctx is
    each slot's context."""
    from led_local.errors import LedError
    from led_local.serve.server import serve as run

    source = ctx.get_parameter_source("api_key")
    if api_key_file is not None:
        if source == click.core.ParameterSource.COMMANDLINE:
            raise LedError("give --api-key or --api-key-file, not both")
        api_key = _read_key(api_key_file)
    elif source == click.core.ParameterSource.COMMANDLINE:
        click.echo("led-local serve: warning: --api-key on the command line is visible to every "
                   "local user (ps, /proc); use --api-key-file FILE or LED_LOCAL_API_KEY",
                   err=True)
    if api_key is not None:  # before the model is read: a bad key fails at once
        from led_local.serve.access import check_api_key

        problem = check_api_key(api_key)
        if problem is not None:
            raise LedError(problem)
    cfg = decode_config(ctx, kw)
    run(chat_model(model, kw), cfg, host=host, port=port,
        parallel=parallel, ctx=kw["n_ctx"],
        max_queue=max_queue, api_key=api_key, reasoning_format=kw["reasoning_format"],
        alias=alias,
        threads=kw["threads"], capture=kw["capture"], projection=kw["projection"],
        verbose=kw["verbose"],
        allowed_hosts=allowed_hosts, cors_origins=cors_origins,
        request_timeout=request_timeout, prefill_chunk=prefill_chunk,
        max_tokens=max_tokens, seed=seed)


def _read_key(path: str) -> str:
    """The API key in ``path``: its first line, surrounding whitespace removed."""
    from led_local.errors import LedError

    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as e:
        raise LedError(f"cannot read --api-key-file {path}: {e.strerror}") from None
    if len(data) > 4096:
        raise LedError(f"--api-key-file {path}: more than 4096 bytes, not a key")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LedError(f"--api-key-file {path} is not UTF-8 text") from None
    lines = text.strip().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise LedError(f"--api-key-file {path} is empty")
    return key
