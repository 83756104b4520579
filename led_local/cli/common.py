"""What every led-local command shares: the click group, user errors, decoding options.

Answers and JSON go to stdout; progress, statistics and llama.cpp's chatter go to stderr.
Every user-fixable problem is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable

import click

from led_local.decoding.methods import METHODS, DecodeConfig
from led_local.decoding.samplers import LEDConfig
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
            raise WriteFailed(str(e)) from None
        except LedError as e:
            raise UserError(str(e)) from None

    return wrapper


def model_argument(f: Callable) -> Callable:
    return click.argument("model", type=click.Path(dir_okay=True, path_type=str))(f)


def decoding_options(f: Callable) -> Callable:
    """The sampling and LED options shared by generate, chat and solve."""
    options = [
        click.option("-m", "--method", type=click.Choice(METHODS), default="led", show_default=True,
                     help="led: Latent Exploration Decoding; sample: llama.cpp's sampler chain; "
                     "greedy: argmax; dola: DoLa contrast."),
        click.option("-t", "--temperature", type=float, default=0.6, show_default=True,
                     help="Sampling temperature (0 = greedy selection)."),
        click.option("--top-k", type=int, default=None, help="sample/dola: top-k [default: 20]."),
        click.option("--top-p", type=float, default=None,
                     help="sample/dola: top-p [default: 0.95]."),
        click.option("--min-p", type=float, default=None, help="sample/dola: min-p [default: 0]."),
        click.option("--led-depths", type=int, default=8, show_default=True,
                     help="led: depths d (final layer plus d-1 shallower states)."),
        click.option("--led-candidates", type=int, default=8, show_default=True,
                     help="led: candidate tokens k from the final layer."),
        click.option("--led-norm", is_flag=True,
                     help="led/dola: apply the final norm before projecting shallower states."),
        click.option("--no-exploit", is_flag=True,
                     help="led: always explore instead of gating by the final layer's confidence."),
        click.option("--think-end", default="</think>", show_default=True,
                     help="led: marker that ends the thinking scope ('' = whole response)."),
        click.option("--dola-layers", type=click.Choice(["low", "high"]), default=None,
                     help="dola: candidate premature layers [default: high]."),
        click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True,
                     help="Context length in tokens."),
        click.option("--threads", type=int, default=None,
                     help="llama.cpp and projection threads [default: cores, up to 8]."),
        click.option("--capture", type=click.Choice(["auto", "callback", "layer-inp"]),
                     default="auto", show_default=True,
                     help="How hidden states leave llama.cpp (layer-inp needs the patched build)."),
        click.option("--chat-template", "chat_template", type=click.Path(path_type=str),
                     default=None, help="Jinja chat template file to use instead of the model's."),
        click.option("--projection", type=click.Choice(["auto", "host", "graph"]),
                     default="auto", show_default=True,
                     help="Where depth logits are computed: host (CPU) or graph (inside llama.cpp, "
                     "on the model's device; patched build). auto: graph when offloaded."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def decode_config(ctx: click.Context, kw: dict) -> DecodeConfig:
    """Build the DecodeConfig, refusing options given for a method that would ignore them."""
    method = kw["method"]
    cmdline = click.core.ParameterSource.COMMANDLINE
    given = {name for name in kw if ctx.get_parameter_source(name) == cmdline}
    only = {"top_k": ("sample", "dola"), "top_p": ("sample", "dola"), "min_p": ("sample", "dola"),
            "led_depths": ("led",), "led_candidates": ("led",), "no_exploit": ("led",),
            "led_norm": ("led", "dola"), "dola_layers": ("dola",), "capture": ("led", "dola"),
            "projection": ("led", "dola")}
    for name, methods in only.items():
        if name in given and method not in methods:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to --method {'/'.join(methods)}, not {method}")
    led = LEDConfig(temperature=kw["temperature"], depths=kw["led_depths"],
                    candidates=kw["led_candidates"], exploit=not kw["no_exploit"],
                    norm=kw["led_norm"])
    return DecodeConfig(
        method=method, temperature=kw["temperature"],
        top_k=20 if kw["top_k"] is None else kw["top_k"],
        top_p=0.95 if kw["top_p"] is None else kw["top_p"],
        min_p=0.0 if kw["min_p"] is None else kw["min_p"],
        led=led, dola_layers=kw["dola_layers"] or "high", think_end=kw["think_end"],
    )


def model_with_template(model, path: str | None):
    """``model`` (a path or ModelInfo) read, with the chat template of the file ``path``
    (``--chat-template``) in place of its own; ``model`` as given without one."""
    if path is None:
        return model
    import dataclasses

    from led_local.llama.gguf_info import model_info
    from led_local.llama.template import load_chat_template

    return dataclasses.replace(model_info(model), chat_template=load_chat_template(path))


def open_engine(model: str, cfg: DecodeConfig, kw: dict, **extra):
    from led_local.decoding.engine import Engine

    return Engine(model_with_template(model, kw.get("chat_template")), cfg, n_ctx=kw["n_ctx"],
                  threads=kw["threads"], capture=kw["capture"], projection=kw["projection"],
                  verbose=kw["verbose"], **extra)


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
