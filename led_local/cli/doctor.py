"""``doctor``: whether this installation (and a model) works, and why not."""

from __future__ import annotations

import json

import click

from led_local.cli.common import main, user_errors


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--capture", type=click.Choice(["auto", "callback", "layer-inp"]), default="auto",
              show_default=True,
              help="The capture path that must work (layer-inp: fail where it is unavailable).")
@click.option("--threads", type=int, default=None,
              help="llama.cpp and projection threads [default: cores, up to 8].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
@user_errors
def doctor(ctx: click.Context, model: str | None, capture: str, threads: int | None,
           as_json: bool) -> None:
    """Check this installation: versions, backend devices, CPU features, the llama.cpp patch,
    AMX; with MODEL also its metadata, a short LED decode through every capture path and the
    LM-head projection against llama.cpp's logits. Exit 0 when every check passes, 1 (one
    line per failed check on stderr) otherwise."""
    from led_local.diagnostics.doctor import run_doctor, to_json

    if threads is not None and threads < 1:
        raise click.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
    checks = run_doctor(model, capture=capture, threads=threads)
    if as_json:
        click.echo(json.dumps(to_json(checks)))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{'ok' if c.ok else 'FAIL':4}  {c.name:{width}}  {c.detail}")
        failed = sum(not c.ok for c in checks)
        click.echo(f"{len(checks)} checks, {failed} failed" if failed else
                   f"all {len(checks)} checks passed")
    for c in checks:
        if not c.ok:
            click.echo(f"doctor: {c.name}: {c.detail}", err=True)
    if not all(c.ok for c in checks):
        ctx.exit(1)
