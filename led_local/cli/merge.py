"""``merge``: shard run files into one run file."""

from __future__ import annotations

import click

from led_local.cli.common import main, user_errors


@main.command()
@click.argument("out", type=click.Path(path_type=str))
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--expect", type=click.Path(path_type=str), default=None,
              help="Problem file (or bundled set) the run should cover: list every missing "
              "(problem, sample) and exit 1 if any.")
@click.option("-n", "--samples", type=int, default=None,
              help="With --expect: samples per problem [default: the most found].")
@click.option("--limit", type=int, default=None,
              help="With --expect: only its first L problems, as solve --limit.")
@click.pass_context
@user_errors
def merge(ctx: click.Context, out: str, shards: tuple[str, ...], expect: str | None,
          samples: int | None, limit: int | None) -> None:
    """Merge the run files SHARDS (same run, any split) into OUT, atomically."""
    from led_local.errors import LedError
    from led_local.eval.merge import merge as merge_runs
    from led_local.eval.problems import load_problems, resolve_problems
    from led_local.eval.runfile import check_not_input

    if expect is None and (samples is not None or limit is not None):
        raise LedError("-n and --limit apply only with --expect")
    if limit is not None and limit < 1:
        raise LedError(f"--limit must be >= 1, got {limit}")
    problems = None
    if expect is not None:
        check_not_input(out, {"the expected problem file": resolve_problems(expect)},
                        option="OUT")
        problems = load_problems(expect)[:limit] if limit else load_problems(expect)
    result = merge_runs(out, list(shards), expect=problems, samples=samples)
    by_problem: dict[str, list[int]] = {}
    for pid, sample in result.missing:
        by_problem.setdefault(pid, []).append(sample)
    for pid, missing in by_problem.items():
        click.echo(f"missing: problem {pid!r} sample{'s' * (len(missing) > 1)} "
                   f"{','.join(map(str, missing))}", err=True)
    if result.n_missing > len(result.missing):
        click.echo(f"missing: {result.n_missing - len(result.missing)} more samples not listed",
                   err=True)
    click.echo(result.summary(), err=True)
    if result.n_missing:
        ctx.exit(1)
