"""``hapo-calibrate``: the token-entropy file that ``--method hapo --hapo-stats`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from led_local.cli.common import (
    StopFlag,
    UserError,
    main,
    method_option,
    model_argument,
    model_with_template,
    user_errors,
)
from led_local.decoding import hapo
from led_local.decoding.options import MIN_P, TEMPERATURE, TOP_K, TOP_P


@main.command("hapo-calibrate")
@model_argument
@click.argument("problems", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Calibration file to write (JSON).")
@click.option("-n", "--samples", type=int, default=1, show_default=True,
              help="Plain samples per problem.")
@click.option("--parallel", type=int, default=16, show_default=True,
              help="Sequences decoded together.")
@click.option("--max-tokens", type=int, default=512, show_default=True,
              help="Most tokens per sample.")
@click.option("--limit", type=int, default=None, help="Only the first L problems.")
@click.option("--prompt-template", type=click.Path(path_type=str), default=None,
              help="File with a {question} slot [default: the reference math prompt].")
@click.option("-s", "--seed", type=int, default=0, show_default=True, help="Run seed.")
@method_option(TEMPERATURE, hapo.METHOD, help="T0, the plain temperature of the calibration "
               "samples.")
@method_option(TOP_K, hapo.METHOD)
@method_option(TOP_P, hapo.METHOD)
@method_option(MIN_P, hapo.METHOD)
@method_option(hapo.PIVOT, hapo.METHOD, help="Pivot quantile for the statistics printed (runs "
               "pick their own).")
@click.option("--threads", type=int, default=None,
              help="llama.cpp threads [default: cores, up to 8].")
@click.option("--chat-template", "chat_template", type=click.Path(path_type=str), default=None,
              help="Jinja chat template file to use instead of the model's.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr.")
@user_errors
def hapo_calibrate(model: str, problems: str, output: str, samples: int, parallel: int,
                   max_tokens: int, limit: int | None, prompt_template: str | None, seed: int,
                   temperature: float, top_k: int, top_p: float, min_p: float,
                   hapo_pivot: float, threads: int | None, chat_template: str | None,
                   verbose: bool) -> None:
    """Sample PROBLEMS plainly with MODEL and record every token's entropy for HAPO."""
    from tqdm import tqdm

    from led_local.decoding.hapo import compute_stats, save_entropies
    from led_local.decoding.methods import DecodeConfig
    from led_local.eval.calibrate import calibration_entropies
    from led_local.eval.problems import load_problems, load_template, resolve_problems
    from led_local.eval.runfile import check_not_input
    from led_local.llama.gguf_info import inspect_model

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    out = Path(output)
    if out.is_dir() or not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise UserError(f"-o must be a file in an existing directory, got {output}")
    check_not_input(output, {"the model": model, "the problem file": resolve_problems(problems),
                             "the prompt template": prompt_template,
                             "the chat template": chat_template}, option="-o")
    cfg = DecodeConfig(method=hapo.NAME, temperature=temperature, top_k=top_k, top_p=top_p,
                       min_p=min_p)
    compute_stats([], pivot=hapo_pivot)  # validates the pivot before any sampling
    info = model_with_template(inspect_model(model), chat_template)
    items = load_problems(problems)[:limit] if limit else load_problems(problems)
    template = load_template(prompt_template)
    bar = tqdm(unit="tok", file=sys.stderr, dynamic_ncols=True)
    try:  # closed on an error too, so that no bar outlives the command
        with StopFlag() as stop:
            ent = calibration_entropies(info, items, cfg, template=template, samples=samples,
                                        parallel=parallel, max_tokens=max_tokens, seed=seed,
                                        threads=threads, on_step=bar.update,
                                        should_stop=lambda: stop.set,
                                        on_notice=lambda m: bar.write(m, file=sys.stderr),
                                        verbose=verbose)
    finally:
        bar.close()
    if stop.set:
        raise UserError("interrupted; nothing written")
    stats = compute_stats(ent, pivot=hapo_pivot)
    if stats is None:
        raise UserError("the calibration samples produced no tokens")
    save_entropies(out, ent, meta={
        "model": info.path.name, "problems": str(problems), "n_problems": len(items),
        "samples": samples, "max_tokens": max_tokens, "seed": seed,
        "params": cfg.params() | {"hapo_pivot": hapo_pivot},
        "temperature": hapo.stats_temperature(temperature),  # the entropies' (softmax(z / T0))
        "stats": stats.to_json(),
    })
    click.echo(f"{len(ent)} token entropies written to {output}; at pivot {hapo_pivot}: "
               f"mu {stats.mu:.4f}, sigma {stats.sigma:.4f}, s+ {stats.s_pos:.4f}, "
               f"s- {stats.s_neg:.4f}", err=True)
