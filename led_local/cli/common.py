"""What every led-local command shares: the click group, user errors, decoding options.

Answers and JSON go to stdout; progress, statistics and llama.cpp's chatter go to stderr.
Every user-fixable problem is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable

import click

from led_local.decoding.hapo import HAPOConfig
from led_local.decoding.methods import METHODS, DecodeConfig
from led_local.decoding.samplers import LEDConfig
from led_local.decoding.swir import SwirConfig
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
                     "greedy: argmax; dola: DoLa contrast; hapo: entropy-adaptive "
                     "temperature; swir: SwiReasoning latent/explicit switching."),
        click.option("-t", "--temperature", type=float, default=None,
                     help="Sampling temperature (0 = greedy selection) "
                     "[default: 0.6; hapo: 1.0]."),
        click.option("--top-k", type=int, default=None,
                     help="sample/dola/hapo/swir: top-k [default: 20; hapo: 0 = off]."),
        click.option("--top-p", type=float, default=None,
                     help="sample/dola/hapo/swir: top-p [default: 0.95; hapo: 1]."),
        click.option("--min-p", type=float, default=None,
                     help="sample/dola/hapo/swir: min-p [default: 0]."),
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
        click.option("--hapo-stats", type=click.Path(path_type=str), default=None,
                     help="hapo: entropy statistics file from led-local hapo-calibrate."),
        click.option("--hapo-tau", type=float, default=None,
                     help="hapo: largest relative temperature change [default: 0.05]."),
        click.option("--hapo-pivot", type=float, default=None,
                     help="hapo: quantile of the log-entropies used as pivot [default: 0.8]."),
        click.option("--hapo-variant", type=click.Choice(["signed", "code"]), default=None,
                     help="hapo: signed cools confident tokens (the paper's intent); code warms "
                     "every token (the released code) [default: signed]."),
        click.option("--swir-window", type=int, default=None,
                     help="swir: explicit steps before latent mode may return [default: 512]."),
        click.option("--swir-max-switch", type=int, default=None,
                     help="swir: switch count that starts forcing an answer [default: off]."),
        click.option("--swir-alpha", type=float, default=None,
                     help="swir: initial weight of the soft vector against <think> on entering "
                     "latent mode [default: 1.0]."),
        click.option("--swir-beta", type=float, default=None,
                     help="swir: initial weight of the soft vector against </think> on "
                     "entering explicit mode [default: 0.7]."),
        click.option("--swir-top-mass", type=float, default=None,
                     help="swir: opt-in approximation: mix only the most probable tokens up "
                     "to this probability mass, reading embedding rows from the file instead "
                     "of a float32 copy [default: 1, the exact mixture]."),
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
    filt = ("sample", "dola", "hapo", "swir")
    hapo = ("hapo",)
    swir = ("swir",)
    only = {"top_k": filt, "top_p": filt, "min_p": filt, "hapo_stats": hapo, "hapo_tau": hapo,
            "hapo_pivot": hapo, "hapo_variant": hapo, "hapo_rolling": hapo,
            "swir_window": swir, "swir_max_switch": swir, "swir_alpha": swir, "swir_beta": swir,
            "swir_top_mass": swir,
            "led_depths": ("led",), "led_candidates": ("led",), "no_exploit": ("led",),
            "led_norm": ("led", "dola"), "dola_layers": ("dola",), "capture": ("led", "dola"),
            "projection": ("led", "dola")}
    for name, methods in only.items():
        if name in given and method not in methods:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to --method {'/'.join(methods)}, not {method}")
    is_hapo = method == "hapo"
    temperature = kw["temperature"]
    if temperature is None:
        temperature = 1.0 if is_hapo else 0.6
    led = LEDConfig(temperature=temperature, depths=kw["led_depths"],
                    candidates=kw["led_candidates"], exploit=not kw["no_exploit"],
                    norm=kw["led_norm"])
    return DecodeConfig(
        method=method, temperature=temperature,
        top_k=(0 if is_hapo else 20) if kw["top_k"] is None else kw["top_k"],
        top_p=(1.0 if is_hapo else 0.95) if kw["top_p"] is None else kw["top_p"],
        min_p=0.0 if kw["min_p"] is None else kw["min_p"],
        led=led, dola_layers=kw["dola_layers"] or "high", think_end=kw["think_end"],
        hapo=_hapo_config(kw) if is_hapo else HAPOConfig(),
        swir=SwirConfig(
            window=512 if kw["swir_window"] is None else kw["swir_window"],
            max_switch=kw["swir_max_switch"],
            alpha=1.0 if kw["swir_alpha"] is None else kw["swir_alpha"],
            beta=0.7 if kw["swir_beta"] is None else kw["swir_beta"],
            top_mass=1.0 if kw["swir_top_mass"] is None else kw["swir_top_mass"]),
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


def _hapo_config(kw: dict) -> HAPOConfig:
    """HAPO's settings: frozen statistics from --hapo-stats, or (solve) --hapo-rolling."""
    from led_local.decoding.hapo import compute_stats, load_entropies

    rolling = kw.get("hapo_rolling")
    path = kw.get("hapo_stats")
    if (rolling is None) == (path is None):
        raise UserError("--method hapo needs --hapo-stats FILE (from led-local hapo-calibrate)"
                        + (" or --hapo-rolling N" if "hapo_rolling" in kw else "")
                        + (", not both" if rolling is not None else ""))
    pivot = 0.8 if kw["hapo_pivot"] is None else kw["hapo_pivot"]
    cfg = HAPOConfig(tau=0.05 if kw["hapo_tau"] is None else kw["hapo_tau"], pivot=pivot,
                     variant=kw["hapo_variant"] or "signed", rolling=rolling)
    if path is None:
        return cfg
    return HAPOConfig(tau=cfg.tau, pivot=pivot, variant=cfg.variant,
                      stats=compute_stats(load_entropies(path), pivot=pivot))


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
