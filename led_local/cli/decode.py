"""``generate`` and ``chat``: one response, or a conversation, from a model."""

from __future__ import annotations

import json

import click

from led_local.cli.common import (
    StopFlag,
    UserError,
    decode_config,
    decoding_options,
    grammar_from,
    grammar_options,
    main,
    model_argument,
    open_engine,
    user_errors,
)
from led_local.cli.text import bad_utf8, utf8


@main.command()
@model_argument
@click.option("-p", "--prompt", required=True, callback=utf8,
              help="The prompt (a user message unless --raw).")
@click.option("--raw", is_flag=True, help="Use the prompt verbatim, without the chat template.")
@click.option("--system", default=None, callback=utf8, help="System message (chat template only).")
@click.option("-n", "--max-tokens", type=int, default=512, show_default=True)
@click.option("-s", "--seed", type=int, default=None, help="Random seed [default: random].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@grammar_options
@decoding_options()
@click.pass_context
@user_errors
def generate(ctx: click.Context, model: str, prompt: str, raw: bool, system: str | None,
             max_tokens: int, seed: int | None, as_json: bool, **kw) -> None:
    """Generate one response to PROMPT with MODEL (a GGUF file)."""
    from led_local.decoding import generate as gen

    grammar = grammar_from(kw)
    cfg = decode_config(ctx, kw)
    if raw and system:
        raise UserError("--system needs the chat template; drop --raw")
    if raw:
        for name in ("thinking", "reasoning_effort", "chat_template_kwargs"):
            if kw.get(name) is not None:
                raise UserError(f"--{name.replace('_', '-')} needs the chat template; drop --raw")
    seed = gen.new_seed() if seed is None else seed
    # batch-invariant, as solve and serve: a seed gives the same tokens in all three
    with open_engine(model, cfg, kw, batch_invariant=True, grammar=grammar) as engine:
        tokens = gen.prompt_tokens(engine, prompt, raw=raw, system=system)
        with StopFlag() as stop:  # Ctrl-C ends the response: what was generated is printed
            result = gen.generate(engine, tokens, max_tokens=max_tokens, seed=seed,
                                  stop=lambda: stop.set)
    record = result.to_json()
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False))
    else:
        _print_result(result, record, cfg, seed)
    if result.finish_reason == "interrupted":
        ctx.exit(130)  # as a shell reports Ctrl-C


def _print_result(result, record: dict, cfg, seed: int) -> None:
    """The response's text on stdout, its one-line summary on stderr."""
    click.echo(result.text)
    t = record["timing"]
    click.echo(f"[{cfg.method}] {record['n_tokens']} tokens ({result.finish_reason}), "
               f"{t['tokens_per_s']} tokens/s, LED explored {record['led']['explored']}, "
               f"seed {seed}", err=True)


@main.command()
@model_argument
@click.option("--system", default=None, callback=utf8, help="System message.")
@click.option("-n", "--max-tokens", type=int, default=1024, show_default=True,
              help="Most tokens per reply.")
@click.option("-s", "--seed", type=int, default=None, help="Random seed [default: random].")
@grammar_options
@decoding_options()
@click.pass_context
@user_errors
def chat(ctx: click.Context, model: str, system: str | None, max_tokens: int,
         seed: int | None, **kw) -> None:
    """Chat with MODEL; /reset forgets the conversation, /exit (or Ctrl-D) leaves.

    Replies stream as they are generated, thinking (and SwiReasoning's latent steps) shown
    dim; Ctrl-C stops a reply and keeps the session."""
    from led_local.decoding.chat import ChatSession
    from led_local.decoding.generate import new_seed
    from led_local.errors import ContextFullError

    grammar = grammar_from(kw)
    cfg = decode_config(ctx, kw)
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    with open_engine(model, cfg, kw, grammar=grammar) as engine:
        engine.rt.apply_chat_template([{"role": "user", "content": "hi"}])  # fail early
        session = ChatSession(engine, system=system, max_tokens=max_tokens,
                              seed=new_seed() if seed is None else seed, format=engine.format)
        click.echo(f"Chatting with {engine.info.name} ({cfg.method}). /reset, /exit.", err=True)
        _lenient_stdin()
        while True:
            line = _read_line()
            if line is None:
                click.echo("", err=True)
                return
            if where := bad_utf8(line):
                click.echo(f"(not sent: the line is not valid UTF-8 text, {where})", err=True)
                continue
            text = line.strip()
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                session.reset()
                click.echo("(conversation reset)", err=True)
                continue
            if not text:
                continue
            try:
                _print_reply(session, text)
            except ContextFullError as e:
                click.echo(f"\n{e}", err=True)


def _lenient_stdin() -> None:
    """Read stdin with surrogate escapes, so that a pasted line that is not UTF-8 is refused
    (``bad_utf8``) instead of ending the session; with a terminal, through readline, which
    takes a long paste whole (the terminal's line editor stops at 4,095 bytes)."""
    import sys

    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (input() then edits lines through it)
        except ImportError:
            pass


def _read_line() -> str | None:
    """One line typed at the prompt; None on Ctrl-D. Ctrl-C clears the line and asks again,
    so that only Ctrl-D or /exit leaves (a reply's Ctrl-C must not end the session)."""
    while True:
        click.echo("> ", nl=False, err=True)
        try:
            return input()
        except EOFError:
            return None
        except KeyboardInterrupt:
            click.echo("", err=True)


def _echo(part, *, latent: bool = False) -> None:
    """A reply's text as it divides: the thinking dim (without its markers), the answer
    plain (dim too for SwiReasoning's latent steps)."""
    if part.reasoning:
        click.echo(click.style(part.reasoning, dim=True), nl=False)
    if part.content:
        click.echo(click.style(part.content, dim=latent), nl=False)


def _print_reply(session, text: str) -> None:
    """Stream one reply: thinking dim, answer plain; Ctrl-C stops the reply only."""
    split = None
    with StopFlag() as stop:
        for piece in session.send(text):
            if split is None:  # the chat format's own split, as the server's
                split = session.format.splitter(scope=session.scope)
            _echo(split.feed(piece.text), latent=piece.latent)
            if stop.set:
                _echo(split.finish())
                click.echo("\n(stopped)", err=True)
                return
    if split is not None:
        _echo(split.finish())
    click.echo("")
    if session.context_full():
        click.echo("(context full: /reset to start over, or raise --ctx)", err=True)
