"""What every led-local command shares: the click group, user errors, decoding options.

Answers and JSON go to stdout; progress, statistics and llama.cpp's chatter go to stderr.
Every user-fixable problem is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable

import click

from led_local.decoding import registry
from led_local.decoding.options import Option
from led_local.errors import LedError, OutputError


class UserError(click.ClickException):
    """A LedError on its way out: ``Error: <message>`` and exit code 2."""

    exit_code = 2


class WriteFailed(click.ClickException):
    """An OutputError on its way out: ``Error: <message>`` and exit code 1."""

    exit_code = 1


def user_errors(f: Callable) -> Callable:
    """Turn LedError into a one-line message with exit code 2 (OutputError: 1), never a
    traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except OutputError as e:
            raise WriteFailed(e.render(_flag)) from None
        except LedError as e:  # options named in the message are shown as their flags
            raise UserError(e.render(_flag)) from None

    return wrapper


def model_argument(f: Callable) -> Callable:
    return click.argument("model", type=click.Path(dir_okay=True, path_type=str))(f)


def _flag(name: str) -> str:
    """The command-line spelling of option ``name``."""
    for o in registry.options():
        if o.name == name and o.cli_flag:
            return o.cli_flag
    return "--" + name.replace("_", "-")


def _scope(name: str) -> str:
    users = registry.users(name)
    return "" if len(users) == len(registry.METHODS) else "/".join(users) + ": "


def _click_option(o: Option) -> Callable:
    names = ([o.short] if o.short else []) + [o.cli_flag, o.name]
    help_text = f"{_scope(o.name)}{o.help} [default: {registry.default_text(o)}]."
    if o.kind is bool:
        return click.option(*names, is_flag=True, flag_value=not o.invert, default=None,
                            help=help_text)
    if o.choices is not None:
        kind = click.Choice(o.choices)
    elif o.kind == "path":
        kind = click.Path(path_type=str)
    else:
        kind = o.kind
    return click.option(*names, type=kind, default=None, help=help_text,
                        metavar="N" if o.kind is int and o.commands else None)


def method_option(o: Option, method, *, help: str | None = None) -> Callable:
    """Option ``o`` with ``method``'s default filled in (a command that always samples one
    way, such as hapo-calibrate), checked against its declared range."""
    names = ([o.short] if o.short else []) + [o.cli_flag, o.name]

    def check(ctx, param, value):
        try:
            return o.check(value)
        except LedError as e:
            raise UserError(e.render(_flag)) from None

    return click.option(*names, type=o.kind, default=method.default(o), show_default=True,
                        help=help or o.help, callback=check)


def decoding_options(command: str | None = None) -> Callable:
    """The decoding options of every registered method (those ``command`` offers), then the
    engine's options; the method's choice among the registry's names."""
    methods = "; ".join(f"{m.name}: {m.help}" for m in registry.METHODS.values())
    states = "/".join(m.name for m in registry.METHODS.values() if m.reads_states)
    options = [
        click.option("-m", "--method", type=click.Choice(list(registry.METHODS)),
                     default=registry.DEFAULT, show_default=True, help=methods + "."),
        *(_click_option(o) for o in registry.options()
          if o.cli_flag and (o.commands is None or command in o.commands)),
        click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True,
                     help="Context length in tokens."),
        click.option("--threads", type=int, default=None,
                     help="llama.cpp and projection threads [default: cores, up to 8]."),
        click.option("--capture", type=click.Choice(["auto", "callback", "layer-inp"]),
                     default="auto", show_default=True,
                     help=f"{states}: how hidden states leave llama.cpp (layer-inp needs the "
                     "patched build)."),
        click.option("--chat-template", "chat_template", type=click.Path(path_type=str),
                     default=None, help="Jinja chat template file to use instead of the model's."),
        reasoning_format_option(),
        *thinking_options(),
        click.option("--projection", type=click.Choice(["auto", "host", "graph"]),
                     default="auto", show_default=True,
                     help=f"{states}: where depth logits are computed: host (CPU) or graph "
                     "(inside llama.cpp, on the model's device; patched build). auto: graph "
                     "when offloaded."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr."),
    ]

    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def decode_config(ctx: click.Context, kw: dict, *, free: frozenset[str] = frozenset()):
    """Build the DecodeConfig, refusing options given for a method that would ignore them;
    ``free``: options the command reads for its own purpose whatever the method (not passed
    to the method)."""
    from led_local.decoding.methods import build_config

    unit = registry.get(kw["method"])
    for name in ("capture", "projection"):
        if (not unit.reads_states and name not in free
                and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE):
            users = "/".join(m.name for m in registry.METHODS.values() if m.reads_states)
            raise UserError(f"--{name} applies to --method {users}, not {unit.name}")
    given = {o.name: kw[o.name] for o in registry.options() if o.name in kw
             and o.name not in free}
    return build_config(unit.name, given)


def reasoning_format_option() -> Callable:
    """``--reasoning-format NAME``: the chat format instead of the one the template shows."""
    from led_local.decoding.chatformat import formats

    return click.option("--reasoning-format", type=click.Choice(list(formats())), default=None,
                        help="How the model marks thinking: where LED's scope ends and solve "
                        "reads the answer, what chat shows dim and serve returns as "
                        "reasoning_content [default: detected from the chat template].")


def thinking_options() -> list[Callable]:
    """``--thinking``, ``--reasoning-effort`` and ``--chat-template-kwargs``: the variables
    the chat template is rendered with (``decoding.switches``)."""
    from led_local.decoding.switches import EFFORTS

    return [
        click.option("--thinking", type=click.Choice(["on", "off"]), default=None,
                     help="Turn the model's thinking on or off through its chat template's "
                     "switch (enable_thinking, thinking or thinking_budget) [default: on where "
                     "the template has a switch]."),
        click.option("--reasoning-effort", type=click.Choice(list(EFFORTS)), default=None,
                     help="How hard the model thinks, for templates that read "
                     "reasoning_effort (gpt-oss) [default: the template's]."),
        click.option("--chat-template-kwargs", "chat_template_kwargs", default=None,
                     metavar="JSON", help="More chat template variables, a JSON object "
                     "(they win over --thinking and --reasoning-effort)."),
    ]


def chat_model(model, kw: dict):
    """``model`` (a path or ModelInfo) read, with the chat template of ``--chat-template`` in
    place of its own and the template variables that ``--thinking``, ``--reasoning-effort``
    and ``--chat-template-kwargs`` ask for (refused with one line where the template has no
    such switch)."""
    import dataclasses

    from led_local.decoding.switches import chat_variables, parse_kwargs
    from led_local.llama.gguf_info import model_info

    info = model_info(model_with_template(model, kw.get("chat_template")))
    thinking = kw.get("thinking")
    variables = chat_variables(
        info.chat_template, thinking=None if thinking is None else thinking == "on",
        reasoning_effort=kw.get("reasoning_effort"),
        kwargs=parse_kwargs(kw.get("chat_template_kwargs")))
    return dataclasses.replace(info, chat_vars=variables) if variables else info


def model_format(info, kw: dict):
    """The chat format of ``info`` (a ModelInfo), or the one ``--reasoning-format`` names."""
    from led_local.decoding.chatformat import for_model

    return for_model(info, kw.get("reasoning_format"))


def model_with_template(model, path: str | None):
    """``model`` (a path or ModelInfo) read, with the chat template of the file ``path``
    (``--chat-template``) in place of its own; ``model`` as given without one."""
    if path is None:
        return model
    import dataclasses

    from led_local.llama.gguf_info import model_info
    from led_local.llama.template import load_chat_template

    return dataclasses.replace(model_info(model), chat_template=load_chat_template(path))


def open_engine(model: str, cfg, kw: dict, **extra):
    from led_local.decoding.engine import Engine

    return Engine(chat_model(model, kw), cfg, n_ctx=kw["n_ctx"],
                  threads=kw["threads"], capture=kw["capture"], projection=kw["projection"],
                  verbose=kw["verbose"], reasoning_format=kw.get("reasoning_format"), **extra)


@click.group()
@click.version_option(package_name="led-local")
def main() -> None:
    """Latent Exploration Decoding (LED) for local GGUF models through llama.cpp."""


class StopFlag:
    """SIGINT sets a flag instead of raising, so Ctrl-C never lands inside llama.cpp's eval
    callback (an exception there would be swallowed and cut the decode short). The first
    Ctrl-C restores the usual handler, so a second one interrupts at once."""

    def __init__(self) -> None:
        self.set = False

    def __enter__(self) -> StopFlag:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_args: object) -> None:
        self.set = True
        signal.signal(signal.SIGINT, self._old)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def grammar_options(f: Callable) -> Callable:
    """``--json-schema FILE`` and ``--grammar FILE``: constrain every response."""
    f = click.option("--grammar", "grammar_file", type=click.Path(dir_okay=False),
                     default=None, help="Constrain the output to this GBNF grammar file.")(f)
    return click.option("--json-schema", "json_schema_file", type=click.Path(dir_okay=False),
                        default=None,
                        help="Constrain the output to JSON valid against this schema file.")(f)


def grammar_from(kw: dict):
    """The Grammar of ``--json-schema``/``--grammar`` (popped from ``kw``), checked by
    llama.cpp's parser when the engine opens; None when neither is given."""
    import json

    from led_local.llama.grammar import Grammar

    schema, gbnf = kw.pop("json_schema_file", None), kw.pop("grammar_file", None)
    if schema and gbnf:
        raise UserError("give --json-schema or --grammar, not both")
    try:
        if schema:
            with open(schema, encoding="utf-8") as fh:
                text = fh.read()
            try:
                return Grammar.from_schema(json.loads(text), param="json_schema")
            except json.JSONDecodeError as e:
                raise UserError(f"--json-schema {schema}: not JSON ({e})") from None
        if gbnf:
            with open(gbnf, encoding="utf-8") as fh:
                return Grammar(fh.read(), "grammar")
    except OSError as e:
        raise UserError(f"cannot read {schema or gbnf}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{schema or gbnf} is not UTF-8 text") from None
    return None
