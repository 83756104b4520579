"""``inspect``: does LED change anything on this model? Depth entropies and LED's distance
from plain sampling, position by position, for a generated, given or recorded response."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from led_local.cli.common import (
    UserError,
    _flag,
    chat_model,
    decode_config,
    decoding_options,
    main,
    model_argument,
    model_format,
    user_errors,
)
from led_local.cli.text import utf8
from led_local.decoding import led, registry
from led_local.decoding.methods import build_config
from led_local.decoding.options import TEMPERATURE, THINK_END

# inspect analyses with the LED options (and captures states) whatever --method generates
_ANALYSIS_OPTIONS = frozenset(o.name for o in led.METHOD.options) | {"capture"}
# what only shapes a generated response (the temperature and the scope also shape the analysis)
_GENERATION_OPTIONS = ("method", "max_tokens", "seed") + tuple(
    o.name for o in registry.options()
    if o.name not in _ANALYSIS_OPTIONS and o not in (TEMPERATURE, THINK_END) and o.cli_flag)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _check_mode(ctx: click.Context, kw: dict) -> str:
    """Which input mode the options select (prompt, response, run, problems); refuses
    options that the mode would ignore."""
    if kw["run"] is not None:
        mode = "run"
    elif kw["prompt"] is not None:
        mode = "response" if kw["response"] is not None else "prompt"
    elif kw["problems"] is not None:
        mode = "problems"
    else:
        raise UserError("give one of --prompt TEXT, --run RUN.jsonl or --problems FILE")
    allowed = {
        "prompt": {"prompt", "raw", "system"},
        "response": {"prompt", "response", "raw", "system"},
        "run": {"run", "problem", "sample", "limit", "problems", "prompt_template"},
        "problems": {"problems", "limit", "prompt_template"},
    }[mode]
    for name in ("prompt", "response", "raw", "system", "run", "problem", "sample", "limit",
                 "problems", "prompt_template"):
        if _given(ctx, name) and name not in allowed:
            flag = "--" + name.replace("_", "-")
            what = {"prompt": "--prompt", "response": "--prompt with --response",
                    "run": "--run", "problems": "--problems"}[mode]
            raise UserError(f"{flag} does not apply to {what}")
    if mode in ("response", "run"):
        for name in _GENERATION_OPTIONS:
            if _given(ctx, name):
                flag = _flag(name)
                raise UserError(f"{flag} applies when inspect generates the response; "
                                "a given or recorded response is analysed as it is")
    if kw["raw"] and kw["system"]:
        raise UserError("--system needs the chat template; drop --raw")
    for name, low in (("limit", 1), ("sample", 0), ("max_tokens", 1)):
        if kw[name] is not None and kw[name] < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {kw[name]}")
    return mode


@main.command()
@model_argument
@click.option("-p", "--prompt", default=None, callback=utf8,
              help="Generate a response to this prompt (a user message unless --raw), or "
              "analyse --response after it.")
@click.option("--response", default=None, callback=utf8,
              help="With --prompt: analyse this response, teacher-forced (nothing sampled).")
@click.option("--raw", is_flag=True, help="Use the prompt verbatim, without the chat template.")
@click.option("--system", default=None, callback=utf8, help="System message (chat template only).")
@click.option("--run", type=click.Path(path_type=str), default=None,
              help="Analyse the responses of a solve run file (JSONL).")
@click.option("--problem", default=None, help="--run: only this problem id.")
@click.option("--sample", type=int, default=None, help="--run: only this sample index.")
@click.option("--limit", type=int, default=None,
              help="--run: the first L records; --problems: the first L problems.")
@click.option("--problems", default=None,
              help="Generate and analyse one response per problem (JSONL or a bundled set); "
              "with --run, the problem file the run used [default: gsm8k].")
@click.option("--prompt-template", type=click.Path(path_type=str), default=None,
              help="File with a {question} slot [default: the reference math prompt].")
@click.option("-n", "--max-tokens", type=int, default=512, show_default=True,
              help="Most tokens per generated response.")
@click.option("-s", "--seed", type=int, default=None, help="Random seed [default: random].")
@click.option("--all-layers", is_flag=True,
              help="Also the logit lens of every block's output (the paper's figure).")
@click.option("--plot", type=click.Path(path_type=str), default=None,
              help="Write the depth-entropy figure and the per-position trace (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@decoding_options()
@click.pass_context
@user_errors
def inspect(ctx: click.Context, model: str, max_tokens: int, seed: int | None,
            all_layers: bool, plot: str | None, as_json: bool, **kw) -> None:
    """Analyse MODEL's responses position by position: depth entropies at ln0 and ln1, LED's
    exploration gate and how far LED moves the emitted-token distribution from plain top-k
    sampling."""
    from led_local.diagnostics.report import format_summary, rounded, summarise
    from led_local.llama.gguf_info import inspect_model

    kw.update(max_tokens=max_tokens, seed=seed)
    mode = _check_mode(ctx, kw)
    if plot:
        _check_plot(plot, model, kw)
    if all_layers and kw["capture"] == "layer-inp":
        raise UserError("--all-layers needs --capture callback or auto: the layer-input "
                        "export has no output of the last block")
    cfg = decode_config(ctx, kw, free=_ANALYSIS_OPTIONS)
    analysis = build_config(led.NAME, {o.name: kw[o.name] for o in led.METHOD.options}
                            | {"temperature": cfg.temperature}).led
    cfg = dataclasses.replace(cfg, led=analysis)
    info = chat_model(inspect_model(model), kw)  # read once
    cfg = cfg.with_format(model_format(info, kw))
    params = {"temperature": cfg.temperature, "led_depths": cfg.led.depths,
              "led_candidates": cfg.led.candidates, "led_exploit": cfg.led.exploit,
              "think_end": cfg.think_end, "all_layers": all_layers}
    items = _generated(info, cfg, kw, mode, params) if mode in ("prompt", "problems") else None
    responses = _analyse(info, cfg, kw, mode, items, all_layers)
    norm = "ln1" if cfg.led.norm else "ln0"
    summary = summarise(responses, norm=norm)
    if plot:
        from led_local.diagnostics.plot import plot_inspection

        plot_inspection(responses, plot, n_layer=info.n_layer, depths=cfg.led.depths,
                        title=f"{info.path.name}: {summary['positions']} positions, "
                        f"T={cfg.temperature}")
        click.echo(f"plot written to {plot}", err=True)
    if as_json:
        record = {"model": info.path.name, "params": params, "responses": responses,
                  "summary": summary}
        click.echo(json.dumps(rounded(record), ensure_ascii=False))
    else:
        click.echo(format_summary(summary, model=info.path.name, depths=cfg.led.depths))


def _check_plot(plot: str, model: str, kw: dict) -> None:
    """Refuse a --plot path that names an input or cannot be a file, before any analysis."""
    import os
    from pathlib import Path

    from led_local.eval.problems import resolve_problems
    from led_local.eval.runfile import check_not_input

    problems = kw["problems"]
    check_not_input(plot, {"the model": model, "the run file": kw["run"],
                           "the problem file": resolve_problems(problems) if problems else None,
                           "the prompt template": kw["prompt_template"],
                           "the chat template": kw["chat_template"],
                           "the HAPO statistics": kw["hapo_stats"]}, option="--plot")
    path = Path(plot)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"--plot {plot} is a directory; give a file name (FILE.png)")
    if not parent.is_dir():
        raise UserError(f"--plot: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--plot {plot} is not writable")


def _bar(total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def _generated(info, cfg, kw: dict, mode: str, params: dict) -> list:
    """Generate the responses of the prompt or problems modes with the decoding options."""
    from led_local.decoding.engine import Engine
    from led_local.decoding.generate import new_seed
    from led_local.diagnostics import sources
    from led_local.eval.problems import load_problems, load_template

    seed = new_seed() if kw["seed"] is None else kw["seed"]
    params["generation"] = {"method": cfg.method, **cfg.params(), "seed": seed,
                            "max_tokens": kw["max_tokens"]}
    capture = kw["capture"] if cfg.unit.reads_states else "auto"
    with Engine(info, cfg, n_ctx=kw["n_ctx"], threads=kw["threads"], capture=capture,
                verbose=kw["verbose"]) as engine:
        if mode == "prompt":
            prompts = [sources.chat_prompt(engine.rt, kw["prompt"], raw=kw["raw"],
                                           system=kw["system"])]
            labels = [{}]
        else:
            problems = load_problems(kw["problems"])[:kw["limit"]]
            template = load_template(kw["prompt_template"])
            prompts = [sources.problem_prompt(engine.rt, template, p) for p in problems]
            labels = [{"problem_id": p.id} for p in problems]
        bar = _bar(len(prompts), "response")
        responses = sources.generate_responses(engine, prompts, max_tokens=kw["max_tokens"],
                                               seed=seed, on_done=lambda n: bar.update())
        bar.close()
    return [sources.Item(p, r, lab) for p, r, lab in zip(prompts, responses, labels)]


def _analyse(info, cfg, kw: dict, mode: str, items: list | None, all_layers: bool) -> list:
    """Build the teacher-forced items where needed, then analyse every position."""
    from led_local.diagnostics import sources
    from led_local.diagnostics.probe import Probe, analyse
    from led_local.eval.problems import load_problems, load_template

    with Probe(info, cfg.led, all_layers=all_layers, n_ctx=kw["n_ctx"], threads=kw["threads"],
               capture=kw["capture"], verbose=kw["verbose"]) as probe:
        if mode == "response":
            prompt = sources.chat_prompt(probe.rt, kw["prompt"], raw=kw["raw"],
                                         system=kw["system"])
            items = [sources.Item(prompt, sources.text_response(probe.rt, kw["response"]))]
        elif mode == "run":
            items = sources.run_items(probe.rt, info, kw["run"],
                                      load_problems(kw["problems"] or "gsm8k"),
                                      load_template(kw["prompt_template"]),
                                      problem=kw["problem"], sample=kw["sample"],
                                      limit=kw["limit"])
        bar = _bar(sum(len(i.response) for i in items), "position")
        responses = analyse(probe, items, led=cfg.led, think_end=cfg.think_end,
                            on_position=bar.update, fmt=model_format(info, kw))
        bar.close()
    return responses
