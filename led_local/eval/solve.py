"""``led-local solve``: N samples per problem, batched, graded, written as a resumable run.

This module joins the pieces (problems, engine, batch scheduler, grader, run file) and reports
progress through a callback; it prints nothing itself.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from led_local.decoding.batch import Job, context_size, run_jobs
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.eval.grading import Grader, extract_answer
from led_local.eval.problems import Problem, render
from led_local.eval.runfile import RunFile
from led_local.llama.gguf_info import ModelInfo, model_info
from led_local.llama.runtime import Runtime


@dataclass(frozen=True)
class SolveOptions:
    """What defines a solve run besides the decoding method."""

    samples: int
    parallel: int = 16
    max_tokens: int = 2048
    seed: int = 0
    limit: int | None = None
    logprobs: bool = False
    threads: int | None = None
    capture: str = "auto"
    force: bool = False
    grade_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise LedError(f"-n must be >= 1, got {self.samples}")
        if self.parallel < 1:
            raise LedError(f"--parallel must be >= 1, got {self.parallel}")
        if self.max_tokens < 1:
            raise LedError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.limit is not None and self.limit < 1:
            raise LedError(f"--limit must be >= 1, got {self.limit}")


@dataclass
class Progress:
    """What the progress callback sees: samples done/total, tokens, elapsed time."""

    total: int
    done: int = 0
    tokens: int = 0
    correct: int = 0
    graded: int = 0
    start: float = 0.0
    last: dict | None = None


def fingerprint(model: str | os.PathLike | ModelInfo, cfg: DecodeConfig, opts: SolveOptions,
                template: str) -> dict:
    """The fields that must agree for a run file to be resumed."""
    p = Path(model.path if isinstance(model, ModelInfo) else model)
    return {
        "model": f"{p.name}:{p.stat().st_size}",
        "method": cfg.method,
        "params": cfg.params(),
        "seed": opts.seed,
        "max_tokens": opts.max_tokens,
        "prompt_template": hashlib.sha256(template.encode()).hexdigest()[:16],
        "logprobs": opts.logprobs,
    }


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
    verbose: bool = False,
) -> Progress:
    """Generate, grade and append every missing (problem, sample) record of the run ``out``."""
    problems = problems[: opts.limit] if opts.limit else problems
    info = model_info(model)
    fp = fingerprint(info, cfg, opts, template)
    run = RunFile(out, fp, force=opts.force)  # validates before anything is written
    wanted = [(p, i) for p in problems for i in range(opts.samples)]
    todo = [(p, i) for p, i in wanted if (p.id, i) not in run.done]
    progress = Progress(total=len(wanted), done=len(wanted) - len(todo))
    for rec in run.records:
        if rec.get("correct") is not None:
            progress.graded += 1
            progress.correct += bool(rec["correct"])
    if not todo:
        return progress
    # size the shared context from the prompts actually left to run (vocabulary-only load)
    with Runtime(info.path, info=info, vocab_only=True, verbose=verbose) as vocab:
        prompts = {p.id: tuple(vocab.tokenize(vocab.apply_chat_template(
            [{"role": "user", "content": render(template, p)}]))) for p, _ in todo}
    longest = max(len(t) for t in prompts.values())
    parallel = min(opts.parallel, len(todo))
    engine = Engine(info, cfg, n_ctx=context_size(parallel, longest, opts.max_tokens),
                    n_seq=parallel + 1, threads=opts.threads, capture=opts.capture,
                    logprobs=opts.logprobs, verbose=verbose, batch_invariant=True)
    by_id = {p.id: p for p in problems}
    jobs = [Job(p.id, i, prompts[p.id]) for p, i in todo]
    run.open_for_append()
    progress.start = time.perf_counter()
    try:
        with engine, Grader(timeout_s=opts.grade_timeout_s) as grader:
            def step(n: int) -> None:
                progress.tokens += n
                on_progress(progress)

            for fin in run_jobs(engine, jobs, parallel=parallel, max_tokens=opts.max_tokens,
                                seed=opts.seed, should_stop=should_stop,
                                on_step=step):
                problem = by_id[fin.job.key]
                rec = _record(engine, fin, problem, fp, grader, opts.logprobs)
                run.append(rec)
                progress.done += 1
                if rec["correct"] is not None:
                    progress.graded += 1
                    progress.correct += bool(rec["correct"])
                progress.last = rec
                on_progress(progress)
    finally:
        run.close()
    return progress


def _record(engine: Engine, fin, problem: Problem, fp: dict, grader: Grader,
            logprobs: bool) -> dict:
    seq = fin.seq
    text = b"".join(engine.rt.token_bytes(t) for t in seq.tokens).decode("utf-8", "replace")
    answer = extract_answer(text, think_end=engine.cfg.think_end or "</think>")
    rec = {
        "problem_id": problem.id,
        "sample": fin.job.sample,
        **fp,
        "text": text,
        "answer": answer,
        "gold": problem.answer,
        "correct": grader.is_correct(problem.answer, answer),
        "n_tokens": len(seq.tokens),
        "finish_reason": seq.finish_reason,
        "time_s": round(fin.time_s, 3),
    }
    if engine.cfg.method == "led":
        rec["led"] = {"explored": seq.explored, "depths": seq.depths}
    if logprobs:
        rec["logprobs"] = [round(x, 6) for x in seq.logprobs]
    if problem.extra:
        rec["extra"] = problem.extra  # the problem line's other fields, kept as given
    return rec
