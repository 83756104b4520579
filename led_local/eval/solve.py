"""``led-local solve``: N samples per problem, batched, graded, written as a resumable run.

This module joins the pieces (the plan, engine, batch scheduler, grader, run file) and reports
progress through callbacks; it prints nothing itself.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from led_local.decoding.batch import Finished, Job, context_size, run_jobs
from led_local.decoding.chatformat import for_model
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.eval.grading import Grader, extract_answer
from led_local.eval.planning import (
    Plan,
    Progress,
    SolveOptions,
    fingerprint,
    plan,
    start_writing,
    touch,
)
from led_local.eval.problems import Problem
from led_local.eval.runfile import RunFile
from led_local.llama.gguf_info import ModelInfo, model_info

__all__ = ["Plan", "Progress", "SolveOptions", "fingerprint", "grade", "make_engine", "plan",
           "sample_record", "solve", "start_writing", "touch"]


def make_engine(model: ModelInfo, cfg: DecodeConfig, opts: SolveOptions, *, longest_prompt: int,
                n_jobs: int, threads: int | None = None, verbose: bool = False
                ) -> tuple[Engine, int]:
    """The batch-invariant engine for up to ``n_jobs`` samples and its parallelism: the context
    holds min(--parallel, n_jobs) streams of the longest prompt plus --max-tokens."""
    parallel = max(1, min(opts.parallel, n_jobs))
    engine = Engine(model, cfg, n_ctx=context_size(parallel, longest_prompt, opts.max_tokens),
                    n_seq=parallel + 1, threads=threads or opts.threads, capture=opts.capture,
                    projection=opts.projection, logprobs=opts.logprobs, verbose=verbose,
                    batch_invariant=True, embed=opts.embed, grammar=opts.grammar)
    return engine, parallel


def solve(
    model: str | os.PathLike | ModelInfo,
    problems: list[Problem],
    out: str | os.PathLike,
    cfg: DecodeConfig,
    opts: SolveOptions,
    *,
    template: str,
    on_progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_notice: Callable[[str], None] = lambda message: None,
    verbose: bool = False,
) -> Progress:
    """Generate, grade and append every missing (problem, sample) record of the run ``out``.

    The run file is locked for the whole call. A problem whose content (question, gold,
    prompt) differs from its records in ``out`` is refused (``force``: a new run). A problem
    whose prompt cannot fit the model's context is written as ``skipped`` records (no
    answer, wrong when it has a gold answer) and the run goes on. ``on_notice`` gets one-line
    messages: where a forced restart moved the old file, which problems were skipped.
    """
    info = model_info(model)
    cfg = cfg.with_format(for_model(info))  # the run records the marker the engine uses
    todo = plan(info, problems, out, cfg, opts, template=template, verbose=verbose)
    progress, run = todo.progress, todo.run
    try:
        if not todo.jobs:
            return touch(todo, on_progress=on_progress, on_notice=on_notice)
        engine, parallel = make_engine(info, cfg, opts, longest_prompt=todo.longest_prompt,
                                       n_jobs=len(todo.jobs), verbose=verbose)
        start_writing(todo, on_progress=on_progress, on_notice=on_notice)
        progress.start = time.perf_counter()
        with engine, Grader(timeout_s=opts.grade_timeout_s) as grader:
            def step(n: int) -> None:
                progress.tokens += n
                on_progress(progress)

            run_kw = dict(parallel=parallel, max_tokens=opts.max_tokens, seed=opts.seed,
                          should_stop=should_stop, on_step=step)
            if cfg.hapo.rolling:  # only HAPO has rolling statistics
                ordered = problems[: opts.limit] if opts.limit else problems
                finished = _rolling_hapo(engine, todo.jobs, ordered, run, cfg, **run_kw)
            else:
                finished = run_jobs(engine, todo.jobs, **run_kw)
            for fin in finished:
                rec = sample_record(engine, fin, todo.problems[fin.job.key], todo.fingerprint,
                                    grader, opts.logprobs, todo.hashes[fin.job.key])
                run.append(rec)
                progress.add(rec)
                on_progress(progress)
    finally:
        run.close()
    return progress


def sample_record(engine: Engine, fin, problem: Problem, fp: dict, grader: Grader | None,
                  logprobs: bool, phash: str) -> dict:
    """The run-file record of the finished sample ``fin`` of ``problem`` (``phash``: its
    problem hash); without a grader ``correct`` is left None for the caller to fill in
    (``grade``)."""
    seq = fin.seq
    text = b"".join(engine.rt.token_bytes(t) for t in seq.tokens).decode("utf-8", "replace")
    answer = extract_answer(text, think_end=engine.cfg.think_end or "</think>")
    rec = {
        "problem_id": problem.id,
        "sample": fin.job.sample,
        **fp,
        "problem_hash": phash,
        "text": text,
        "answer": answer,
        "gold": problem.answer,
        "correct": grader.is_correct(problem.answer, answer) if grader else None,
        "n_tokens": len(seq.tokens),
        "finish_reason": seq.finish_reason,
        "time_s": round(fin.time_s, 3),
    }
    # the method's own fields, with per-token lists where the method wants them in runs
    cfg = engine.cfg
    rec.update(cfg.unit.record(seq, cfg, full=cfg.unit.full_records(cfg)))
    if logprobs:
        rec["logprobs"] = [round(x, 6) for x in seq.logprobs]
    if seq.embedding is not None:
        rec["embedding"] = encode_embedding(seq.embedding)
        rec["embedding_dim"] = int(seq.embedding.shape[0])
    if problem.extra:
        rec["extra"] = problem.extra  # the problem line's other fields, kept as given
    return rec


def grade(rec: dict, grader: Grader) -> dict:
    """Fill in ``correct`` of a record made without a grader (in place, key order kept)."""
    rec["correct"] = grader.is_correct(rec["gold"], rec["answer"])
    return rec


def encode_embedding(vec: np.ndarray) -> str:
    """A feature as base64 of little-endian float32 (decode: ``np.frombuffer(base64.b64decode(s),
    "<f4")``)."""
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode("ascii")


def _rolling_hapo(engine: Engine, jobs: list[Job], problems: list[Problem], run: RunFile,
                  cfg: DecodeConfig, **run_kw) -> Iterator[Finished]:
    """HAPO with rolling statistics: problems in file order form batches of
    ``cfg.hapo.rolling``; batch b samples with the statistics of batch b-1's token entropies
    (read back from the run's records, so a resumed run uses the same), batch 0 at plain T0.
    Each batch finishes before the next starts."""
    from led_local.decoding.hapo import compute_stats, recorded_entropies, set_stats

    k = cfg.hapo.rolling
    batch_of = {p.id: i // k for i, p in enumerate(problems)}
    for b in sorted({batch_of[j.key] for j in jobs}):
        prev = [h for r in run.records if batch_of.get(r["problem_id"]) == b - 1
                for h in recorded_entropies(r, where=str(run.path))]
        set_stats(engine, compute_stats(prev, pivot=cfg.hapo.pivot) if b > 0 else None)
        yield from run_jobs(engine, [j for j in jobs if batch_of[j.key] == b], **run_kw)
        if run_kw["should_stop"]():
            return
