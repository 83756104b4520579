"""led-local's command line: it parses options and prints; the work happens in the library.

Answers and JSON go to stdout; progress, statistics and llama.cpp's chatter go to stderr.
Every user-fixable problem is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from collections.abc import Callable

import click

from led_local.errors import LedError
from led_local.methods import METHODS, DecodeConfig
from led_local.samplers import LEDConfig


class UserError(click.ClickException):
    """A LedError on its way out: ``Error: <message>`` and exit code 2."""

    exit_code = 2


def user_errors(f: Callable) -> Callable:
    """Turn LedError into a one-line message with exit code 2, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
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
            "led_norm": ("led", "dola"), "dola_layers": ("dola",), "capture": ("led", "dola")}
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


def open_engine(model: str, cfg: DecodeConfig, kw: dict, **extra):
    from led_local.engine import Engine

    return Engine(model, cfg, n_ctx=kw["n_ctx"], threads=kw["threads"], capture=kw["capture"],
                  verbose=kw["verbose"], **extra)


@click.group()
@click.version_option(package_name="led-local")
def main() -> None:
    """Latent Exploration Decoding (LED) for local GGUF models through llama.cpp."""


@main.command()
@model_argument
@click.option("-p", "--prompt", required=True, help="The prompt (a user message unless --raw).")
@click.option("--raw", is_flag=True, help="Use the prompt verbatim, without the chat template.")
@click.option("--system", default=None, help="System message (chat template only).")
@click.option("-n", "--max-tokens", type=int, default=512, show_default=True)
@click.option("-s", "--seed", type=int, default=None, help="Random seed [default: random].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@decoding_options
@click.pass_context
@user_errors
def generate(ctx: click.Context, model: str, prompt: str, raw: bool, system: str | None,
             max_tokens: int, seed: int | None, as_json: bool, **kw) -> None:
    """Generate one response to PROMPT with MODEL (a GGUF file)."""
    from led_local import generate as gen

    cfg = decode_config(ctx, kw)
    if raw and system:
        raise UserError("--system needs the chat template; drop --raw")
    seed = gen.new_seed() if seed is None else seed
    with open_engine(model, cfg, kw) as engine:
        tokens = gen.prompt_tokens(engine, prompt, raw=raw, system=system)
        result = gen.generate(engine, tokens, max_tokens=max_tokens, seed=seed)
    record = result.to_json()
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False))
        return
    click.echo(result.text)
    t = record["timing"]
    click.echo(f"[{cfg.method}] {record['n_tokens']} tokens ({result.finish_reason}), "
               f"{t['tokens_per_s']} tokens/s, LED explored {record['led']['explored']}, "
               f"seed {seed}", err=True)


@main.command()
@model_argument
@click.option("--system", default=None, help="System message.")
@click.option("-n", "--max-tokens", type=int, default=1024, show_default=True,
              help="Most tokens per reply.")
@click.option("-s", "--seed", type=int, default=None, help="Random seed [default: random].")
@decoding_options
@click.pass_context
@user_errors
def chat(ctx: click.Context, model: str, system: str | None, max_tokens: int,
         seed: int | None, **kw) -> None:
    """Chat with MODEL; /reset forgets the conversation, /exit (or Ctrl-D) leaves.

    Replies stream as they are generated, thinking shown dim; Ctrl-C stops a reply and
    keeps the session."""
    from led_local.chat import ChatSession
    from led_local.errors import ContextFullError
    from led_local.generate import new_seed

    cfg = decode_config(ctx, kw)
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    with open_engine(model, cfg, kw) as engine:
        engine.rt.apply_chat_template([{"role": "user", "content": "hi"}])  # fail early
        session = ChatSession(engine, system=system, max_tokens=max_tokens,
                              seed=new_seed() if seed is None else seed)
        click.echo(f"Chatting with {engine.info.name} ({cfg.method}). /reset, /exit.", err=True)
        while True:
            try:
                line = click.prompt(">", prompt_suffix=" ", default="", show_default=False,
                                    err=True)
            except (EOFError, click.Abort):
                click.echo("", err=True)
                return
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
                _print_reply(session, text, think_end=cfg.think_end)
            except ContextFullError as e:
                click.echo(f"\n{e}", err=True)


class _StopFlag:
    """SIGINT sets a flag instead of raising, so Ctrl-C never lands inside llama.cpp's eval
    callback (an exception there would be swallowed and cut the decode short). The first
    Ctrl-C restores the usual handler, so a second one interrupts at once."""

    def __init__(self) -> None:
        self.set = False

    def __enter__(self) -> _StopFlag:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_args: object) -> None:
        self.set = True
        signal.signal(signal.SIGINT, self._old)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def _print_reply(session, text: str, *, think_end: str) -> None:
    """Stream one reply: thinking dim, answer plain; Ctrl-C stops the reply only."""
    thinking = None
    shown = ""
    with _StopFlag() as stop:
        for piece in session.send(text):
            if thinking is None:
                thinking = session.opened_thinking
            shown += piece.text
            if not thinking and shown.lstrip().startswith("<think>") and think_end:
                thinking = True
            click.echo(click.style(piece.text, dim=thinking), nl=False)
            if thinking and think_end and think_end in shown:
                thinking = False
            if stop.set:
                click.echo("\n(stopped)", err=True)
                return
    click.echo("")
    if session.context_full():
        click.echo("(context full: /reset to start over, or raise --ctx)", err=True)


@main.command()
@model_argument
@click.argument("problems", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Run file (JSONL, one record per sample); resumed when it exists.")
@click.option("-n", "--samples", type=int, default=16, show_default=True,
              help="Samples per problem.")
@click.option("--parallel", type=int, default=16, show_default=True,
              help="Sequences decoded together.")
@click.option("--max-tokens", type=int, default=2048, show_default=True,
              help="Most tokens per sample.")
@click.option("--limit", type=int, default=None, help="Only the first L problems.")
@click.option("--prompt-template", type=click.Path(path_type=str), default=None,
              help="File with a {question} slot [default: the reference math prompt].")
@click.option("-s", "--seed", type=int, default=0, show_default=True, help="Run seed.")
@click.option("--logprobs", is_flag=True, help="Record each token's final-layer log-probability.")
@click.option("--force", is_flag=True,
              help="Start a new run over an incompatible run file (kept as a .bak).")
@decoding_options
@click.pass_context
@user_errors
def solve(ctx: click.Context, model: str, problems: str, output: str, samples: int,
          parallel: int, max_tokens: int, limit: int | None, prompt_template: str | None,
          seed: int, logprobs: bool, force: bool, **kw) -> None:
    """Sample every problem of PROBLEMS (JSONL) N times with MODEL, grade, write a run file."""
    from led_local import solve as solving
    from led_local.gguf_info import inspect_model
    from led_local.problems import load_problems, load_template

    cfg = decode_config(ctx, kw)
    if ctx.get_parameter_source("n_ctx") == click.core.ParameterSource.COMMANDLINE:
        raise UserError("--ctx does not apply to solve: the context is sized from the prompts, "
                        "--parallel and --max-tokens")
    opts = solving.SolveOptions(samples=samples, parallel=parallel, max_tokens=max_tokens,
                                seed=seed, limit=limit, logprobs=logprobs, threads=kw["threads"],
                                capture=kw["capture"], force=force)
    inspect_model(model)
    items = load_problems(problems)
    template = load_template(prompt_template)
    bar = _Bar(min(len(items), limit or len(items)) * samples)
    with _StopFlag() as stop:
        progress = solving.solve(model, items, output, cfg, opts, template=template,
                                 on_progress=bar.update,
                                 should_stop=lambda: stop.set, verbose=kw["verbose"])
    bar.close()
    elapsed = time.perf_counter() - progress.start if progress.start else 0.0
    acc = f"{100 * progress.correct / progress.graded:.1f}%" if progress.graded else "n/a"
    state = "stopped early; run again to resume" if stop.set else "done"
    click.echo(f"{state}: {progress.done}/{progress.total} samples in {output}, "
               f"pass@1 so far {acc} ({progress.correct}/{progress.graded}), "
               f"{progress.tokens} tokens in {elapsed:.1f}s this session", err=True)
    if stop.set:
        ctx.exit(130)  # interrupted, as a shell reports Ctrl-C


class _Bar:
    """A tqdm bar on stderr: samples done, generated tokens/s, ETA."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True)
        self._shown = 0.0

    def update(self, p) -> None:
        """Called after every decode step; redraws at most once a second (and at the end)."""
        now = time.perf_counter()
        if now - self._shown < 1.0 and p.done < p.total:
            return
        self._shown = now
        if self.bar.n == 0 and p.done:
            self.bar.initial = p.done  # samples resumed from an earlier run
        self.bar.n = p.done
        if p.start:
            rate = p.tokens / max(1e-9, now - p.start)
            acc = f"{100 * p.correct / p.graded:.0f}%" if p.graded else "-"
            self.bar.set_postfix_str(f"{rate:.0f} tok/s, acc {acc}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option("--k", "ks", default=None, help="Comma-separated k values [default: 1,2,4,8,16 "
              "up to the samples per problem].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def passk(run: str, ks: str | None, as_json: bool) -> None:
    """Unbiased pass@k, mean accuracy and maj@n of a run file."""
    from led_local import report
    from led_local.grading import Grader

    r = report.Run(run)
    k_list = report.parse_ks(ks) if ks else report.default_ks(r.max_samples)
    with Grader() as grader:
        out = report.passk_report(r, k_list, equivalent=grader.equivalent)
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(report.format_passk(out, k_list))


@main.command()
@click.argument("run_a", type=click.Path(path_type=str))
@click.argument("run_b", type=click.Path(path_type=str))
@click.option("--k", "ks", default=None, help="Comma-separated k values.")
@click.option("--plot", type=click.Path(path_type=str), default=None,
              help="Write a pass@k-versus-k plot (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def compare(run_a: str, run_b: str, ks: str | None, plot: str | None, as_json: bool) -> None:
    """Compare two runs problem by problem: pass@k of each, B - A with a bootstrap CI."""
    from led_local import report
    from led_local.passk import plot_pass_at_k

    a, b = report.Run(run_a), report.Run(run_b)
    k_list = report.parse_ks(ks) if ks else report.default_ks(min(a.max_samples, b.max_samples))
    out = report.compare_report(a, b, k_list)
    if plot:
        plot_pass_at_k(report.curves([a, b], k_list), plot, title="pass@k")
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(report.format_compare(out, k_list))
        if plot:
            click.echo(f"plot written to {plot}", err=True)


@main.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def info(model: str, as_json: bool) -> None:
    """Describe MODEL: architecture, sizes, LM head, chat template, capture path."""
    from led_local.capture import capture_path
    from led_local.gguf_info import inspect_model

    m = inspect_model(model)
    record = {
        "name": m.name, "architecture": m.architecture, "blocks": m.n_layer, "width": m.n_embd,
        "vocabulary": m.n_vocab, "lm_head": m.head_tensor, "lm_head_type": m.head_type,
        "tied": m.tied, "chat_template": bool(m.chat_template), "led_supported": m.led_supported,
        "capture": capture_path(m), "final_softcap": m.final_softcap or None,
        "head_memory_mb": round(m.n_vocab * m.n_embd * 4 / 1e6, 1),
    }
    if as_json:
        click.echo(json.dumps(record))
        return
    for key, value in record.items():
        click.echo(f"{key:16} {value}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
