"""``solve``, ``passk`` and ``compare``: problem sets, run files and pass@k."""

from __future__ import annotations

import json
import sys
import time

import click

from led_local.cli.common import (
    StopFlag,
    UserError,
    chat_model,
    decode_config,
    decoding_options,
    grammar_from,
    grammar_options,
    main,
    model_argument,
    model_format,
    user_errors,
)


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
@click.option("--embed", is_flag=True,
              help="Record each response's mean final-norm hidden state (for passk --select).")
@click.option("--force", is_flag=True,
              help="Start a new run over an incompatible file (moved aside as a .bak).")
@click.option("--shard", default=None, metavar="I/N",
              help="Only the problems of shard I of N (0 <= I < N), by a hash of their id.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None,
              metavar="[ADDRESS]", help="Spread the samples over Ray actors: the cluster at "
              "ADDRESS, or a local Ray instance without one (pip install 'led-local[ray]').")
@click.option("--ray-workers", type=int, default=None,
              help="--ray: actors [default: the cluster's CPUs / --ray-cpus-per-worker].")
@click.option("--ray-cpus-per-worker", type=float, default=1.0, show_default=True,
              help="--ray: CPUs per actor (and its llama.cpp threads unless --threads).")
@click.option("--ray-gpus-per-worker", type=float, default=0.0, show_default=True,
              help="--ray: GPUs per actor.")
@grammar_options
@decoding_options("solve")
@click.pass_context
@user_errors
def solve(ctx: click.Context, model: str, problems: str, output: str, samples: int,
          parallel: int, max_tokens: int, limit: int | None, prompt_template: str | None,
          seed: int, logprobs: bool, embed: bool, force: bool,
          shard: str | None, ray_address: str | None,
          ray_workers: int | None, ray_cpus_per_worker: float, ray_gpus_per_worker: float,
          **kw) -> None:
    """Sample every problem of PROBLEMS (JSONL) N times with MODEL, grade, write a run file."""
    from led_local.eval import solve as solving
    from led_local.eval.problems import load_problems, load_template, resolve_problems
    from led_local.eval.runfile import check_not_input
    from led_local.eval.shards import parse_shard, select
    from led_local.llama.gguf_info import inspect_model

    if ray_address is None:
        for name in ("ray_workers", "ray_cpus_per_worker", "ray_gpus_per_worker"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise UserError(f"--{name.replace('_', '-')} applies only with --ray")

    grammar = grammar_from(kw)
    cfg = decode_config(ctx, kw)
    if kw.get("hapo_rolling") and (ray_address is not None or shard is not None):
        raise UserError("--hapo-rolling needs every problem in one process (each batch of "
                        "problems is calibrated on the one before); drop --shard/--ray")
    if ctx.get_parameter_source("n_ctx") == click.core.ParameterSource.COMMANDLINE:
        raise UserError("--ctx does not apply to solve: the context is sized from the prompts, "
                        "--parallel and --max-tokens")
    opts = solving.SolveOptions(samples=samples, parallel=parallel, max_tokens=max_tokens,
                                seed=seed, limit=limit, logprobs=logprobs, threads=kw["threads"],
                                capture=kw["capture"], projection=kw["projection"],
                                force=force, embed=embed, grammar=grammar,
                                shard=parse_shard(shard) if shard is not None else None)
    check_not_input(output, {"the model": model, "the problem file": resolve_problems(problems),
                             "the prompt template": prompt_template,
                             "the chat template": kw["chat_template"],
                             "the HAPO statistics": kw["hapo_stats"]}, option="-o")
    info = chat_model(inspect_model(model), kw)  # read once
    cfg = cfg.with_format(model_format(info, kw))  # the run file records the marker used
    items = load_problems(problems)
    template = load_template(prompt_template)
    chosen = items[:limit] if limit else items
    bar = _Bar(len(select(chosen, *opts.shard) if opts.shard else chosen) * samples)
    failed = None
    try:  # the bar is closed on every path (a stale tqdm bar shifts later ones)
        with StopFlag() as stop:
            if ray_address is None:
                progress = solving.solve(info, items, output, cfg, opts, template=template,
                                         on_progress=bar.update,
                                         on_notice=lambda m: bar.bar.write(m, file=sys.stderr),
                                         should_stop=lambda: stop.set, verbose=kw["verbose"])
            else:
                from led_local.eval.ray_solve import RayOptions, ShardsFailed, solve_ray

                ray_opts = RayOptions(address=ray_address or None, workers=ray_workers,
                                      cpus_per_worker=ray_cpus_per_worker,
                                      gpus_per_worker=ray_gpus_per_worker)
                try:
                    progress = solve_ray(info, items, output, cfg, opts, ray_opts,
                                         template=template, on_progress=bar.update,
                                         on_notice=lambda m: bar.bar.write(m, file=sys.stderr),
                                         should_stop=lambda: stop.set, verbose=kw["verbose"])
                except ShardsFailed as e:
                    progress, failed = e.progress, e
    finally:
        bar.close()
    elapsed = time.perf_counter() - progress.start if progress.start else 0.0
    acc = f"{100 * progress.correct / progress.graded:.1f}%" if progress.graded else "n/a"
    state = ("stopped early; run again to resume" if stop.set else
             "incomplete; run again to retry the rest" if failed else "done")
    click.echo(f"{state}: {progress.done}/{progress.total} samples in {output}, "
               f"pass@1 so far {acc} ({progress.correct}/{progress.graded}), "
               f"{progress.tokens} tokens in {elapsed:.1f}s this session", err=True)
    if stop.set:
        ctx.exit(130)  # interrupted, as a shell reports Ctrl-C
    if failed:
        click.echo(f"Error: {failed}", err=True)
        ctx.exit(1)


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


def select_options(f):
    """--select and the RepExp options shared by passk and compare."""
    options = [
        click.option("--select", type=click.Choice(["repexp"]), default=None,
                     help="Score the answers a selector verifies first: repexp = RepExp's "
                     "diverse selection, beside random (needs solve --embed)."),
        click.option("--dim", type=int, default=512, show_default=True,
                     help="repexp: random projection size (0 = the features unprojected)."),
        click.option("--lambda", "lam", type=float, default=1.0, show_default=True,
                     help="repexp: ridge lambda."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="repexp: projection and bootstrap seed."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _check_select(ctx: click.Context, select: str | None) -> None:
    if select is None:
        for name in ("dim", "lam", "seed"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                flag = "--lambda" if name == "lam" else f"--{name}"
                raise UserError(f"{flag} applies to --select repexp")


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option("--k", "ks", default=None, help="Comma-separated k values [default: 1,2,4,8,16 "
              "up to the samples per problem; with --select: every k up to N].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@select_options
@click.pass_context
@user_errors
def passk(ctx: click.Context, run: str, ks: str | None, as_json: bool, select: str | None,
          dim: int, lam: float, seed: int) -> None:
    """Unbiased pass@k, mean accuracy and maj@n of a run file."""
    from led_local.eval import report
    from led_local.eval.grading import Grader

    _check_select(ctx, select)
    if select == "repexp":
        from led_local.eval import repexp

        pools = repexp.Pools(run)
        k_list = report.parse_ks(ks) if ks else None
        out = repexp.passk_repexp(pools, dim=dim, lam=lam, seed=seed, ks=k_list)
        _emit(out, as_json, lambda: repexp.format_passk_repexp(
            out, k_list or repexp.display_ks(pools.max_samples)))
        return
    r = report.Run(run)
    k_list = report.parse_ks(ks) if ks else report.default_ks(r.max_samples)
    with Grader() as grader:
        out = report.passk_report(r, k_list, equivalent=grader.equivalent)
    _emit(out, as_json, lambda: report.format_passk(out, k_list))


def _emit(out: dict, as_json: bool, text, *, plot: str | None = None) -> None:
    """A report on stdout: one JSON object, or its text (then the plot's path on stderr)."""
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(text())
    if plot:
        click.echo(f"plot written to {plot}", err=True)


@main.command()
@click.argument("run_a", type=click.Path(path_type=str))
@click.argument("run_b", type=click.Path(path_type=str))
@click.option("--k", "ks", default=None, help="Comma-separated k values.")
@click.option("--plot", type=click.Path(path_type=str), default=None,
              help="Write a pass@k-versus-k plot (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@select_options
@click.pass_context
@user_errors
def compare(ctx: click.Context, run_a: str, run_b: str, ks: str | None, plot: str | None,
            as_json: bool, select: str | None, dim: int, lam: float, seed: int) -> None:
    """Compare two runs problem by problem: pass@k of each, B - A with a bootstrap CI."""
    from led_local.eval import report
    from led_local.eval.passk import plot_pass_at_k
    from led_local.eval.runfile import check_not_input

    if plot:
        check_not_input(plot, {"run A": run_a, "run B": run_b}, option="--plot")
    _check_select(ctx, select)
    if select == "repexp":
        _compare_repexp(run_a, run_b, ks, plot, as_json, dim=dim, lam=lam, seed=seed)
        return
    a, b = report.Run(run_a), report.Run(run_b)
    k_list = report.parse_ks(ks) if ks else report.default_ks(min(a.max_samples, b.max_samples))
    out = report.compare_report(a, b, k_list)
    if plot:
        plot_pass_at_k(report.curves([a, b], k_list), plot, title="pass@k")
    _emit(out, as_json, lambda: report.format_compare(out, k_list), plot=plot)


def _compare_repexp(run_a: str, run_b: str, ks: str | None, plot: str | None, as_json: bool,
                    *, dim: int, lam: float, seed: int) -> None:
    from led_local.eval import repexp, report
    from led_local.eval.passk import plot_pass_at_k

    a, b = repexp.Pools(run_a), repexp.Pools(run_b)
    k_list = report.parse_ks(ks) if ks else None
    out = repexp.compare_repexp(a, b, dim=dim, lam=lam, seed=seed, ks=k_list)
    show = k_list or repexp.display_ks(out["ks"][-1])
    if plot:
        plot_pass_at_k(repexp.compare_curves(out, show), plot,
                       title="pass@k: random vs RepExp selection")
    _emit(out, as_json, lambda: repexp.format_compare_repexp(out, show), plot=plot)
