"""``led-local hapo-calibrate``: HAPO's frozen statistics from plain samples.

The calibration set is sampled at the plain temperature T0 (HAPO without statistics, as its
first training batch), with the same filters the HAPO run will use; every generated token's
entropy of softmax(z / T0) is kept, as the authors' trainer computes the statistics from the
rollouts at their temperature. ``--hapo-stats`` later turns these into the pivot statistics at
whatever ``--hapo-pivot`` the run asks for, for runs at the same T0.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from led_local.decoding import hapo
from led_local.decoding.batch import Job, context_size, run_jobs
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.errors import ContextFullError, LedError
from led_local.eval.problems import Problem, render
from led_local.llama.gguf_info import ModelInfo, model_info
from led_local.llama.runtime import Runtime, context_limit, max_token_bytes


def calibration_entropies(
    model: str | os.PathLike | ModelInfo,
    problems: list[Problem],
    cfg: DecodeConfig,
    *,
    template: str,
    samples: int = 1,
    parallel: int = 16,
    max_tokens: int = 512,
    seed: int = 0,
    threads: int | None = None,
    on_step: Callable[[int], None] = lambda n: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_notice: Callable[[str], None] = lambda message: None,
    verbose: bool = False,
) -> list[float]:
    """Every generated token's entropy (nats, at T0) over ``samples`` plain samples of
    each problem, in (problem, sample) order, whatever the batching. cfg.method must be
    ``hapo`` without statistics (sampling at T0 with its filters). A problem whose prompt
    cannot fit the model's context (judged by its bytes, then its tokens, as ``solve`` does)
    is left out, with a message to ``on_notice``."""
    if cfg.unit is not hapo.METHOD or cfg.hapo.stats is not None or cfg.hapo.rolling is not None:
        raise ValueError("calibration samples with `method` hapo and no statistics")
    if samples < 1 or parallel < 1 or max_tokens < 1 or not problems:
        raise LedError(f"hapo-calibrate needs problems, -n >= 1, `parallel` >= 1 and "
                       f"`max_tokens` >= 1 (got {len(problems)} problems, -n {samples}, "
                       f"`parallel` {parallel}, `max_tokens` {max_tokens})")
    info = model_info(model)
    limit = context_limit(info) - 1
    prompts: dict[str, tuple[int, ...]] = {}
    with Runtime(info.path, info=info, vocab_only=True, verbose=verbose) as vocab:
        for p in problems:
            user = render(template, p)
            try:
                if len(user.encode("utf-8", "replace")) > limit * max_token_bytes(info):
                    raise ContextFullError(f"the prompt is more than {limit} tokens can hold")
                prompts[p.id] = tuple(vocab.tokenize(vocab.apply_chat_template(
                    [{"role": "user", "content": user}]), limit=limit))
            except ContextFullError as e:
                on_notice(f"problem {p.id!r} left out: {e}")
    problems = [p for p in problems if p.id in prompts]
    if not problems:
        raise LedError("no problem's prompt fits the model's context")
    jobs = [Job(p.id, i, prompts[p.id]) for p in problems for i in range(samples)]
    parallel = min(parallel, len(jobs))
    longest = max(len(t) for t in prompts.values())
    engine = Engine(info, cfg, n_ctx=context_size(parallel, longest, max_tokens),
                    n_seq=parallel + 1, threads=threads, verbose=verbose, batch_invariant=True)
    got: dict[tuple[str, int], list[float]] = {}
    with engine:
        for fin in run_jobs(engine, jobs, parallel=parallel, max_tokens=max_tokens, seed=seed,
                            should_stop=should_stop, on_step=on_step):
            got[(fin.job.key, fin.job.sample)] = list(fin.seq.trace.entropies)
    return [h for j in jobs for h in got.get((j.key, j.sample), [])]
