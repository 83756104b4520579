"""``led-local solve``: N samples per problem, batched, graded, written as a resumable run.

This module joins the pieces (problems, engine, batch scheduler, grader, run file) and reports
progress through a callback; it prints nothing itself.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from led_local.decoding.batch import Finished, Job, context_size, run_jobs
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.errors import ContextFullError, LedError
from led_local.eval.grading import Grader, extract_answer
from led_local.eval.problems import Problem, render
from led_local.eval.runfile import RunFile, problem_hash
from led_local.llama.gguf_info import ModelInfo, model_info
from led_local.llama.runtime import Runtime, context_limit, max_token_bytes


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
    projection: str = "auto"
    force: bool = False
    grade_timeout_s: float = 5.0
    embed: bool = False

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
    """The fields that must agree for a run file to be resumed (``embed`` only when on, so a
    run without it has the same records as before the option existed)."""
    p = Path(model.path if isinstance(model, ModelInfo) else model)
    fp = {
        "model": f"{p.name}:{p.stat().st_size}",
        "method": cfg.method,
        "params": cfg.params(),
        "seed": opts.seed,
        "max_tokens": opts.max_tokens,
        "prompt_template": hashlib.sha256(template.encode()).hexdigest()[:16],
        "logprobs": opts.logprobs,
    }
    if opts.embed:
        fp["embed"] = True
    return fp


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
    problems = problems[: opts.limit] if opts.limit else problems
    info = model_info(model)
    fp = fingerprint(info, cfg, opts, template)
    run = RunFile(out, fp, force=opts.force)  # locks; validates before anything is written
    try:
        return _solve(info, problems, run, cfg, opts, template=template,
                      on_progress=on_progress, should_stop=should_stop, on_notice=on_notice,
                      verbose=verbose)
    finally:
        run.close()


def _solve(info: ModelInfo, problems: list[Problem], run: RunFile, cfg: DecodeConfig,
           opts: SolveOptions, *, template: str, on_progress, should_stop, on_notice,
           verbose: bool) -> Progress:
    by_id = {p.id: p for p in problems}
    with Runtime(info.path, info=info, vocab_only=True, verbose=verbose) as vocab:
        chats, hashes, skipped = _prompts(vocab, problems, template)
        _check_unchanged(run, by_id, hashes)
        wanted = [(p, i) for p in problems for i in range(opts.samples)]
        todo = [(p, i) for p, i in wanted if (p.id, i) not in run.done]
        prompts: dict[str, tuple[int, ...]] = {}
        for pid in dict.fromkeys(p.id for p, _ in todo):
            if pid in skipped:
                continue
            try:  # size checked by bytes, then tokens, before llama.cpp's tokenizer sees it
                prompts[pid] = tuple(vocab.tokenize(chats[pid], limit=context_limit(info) - 1))
            except ContextFullError as e:
                skipped[pid] = str(e)
    progress = Progress(total=len(wanted), done=len(wanted) - len(todo))
    for rec in run.records:
        if rec.get("correct") is not None:
            progress.graded += 1
            progress.correct += bool(rec["correct"])
    if not todo:
        return progress
    run.open_for_append()
    if run.backup is not None:
        on_notice(f"the old {run.path} was moved to {run.backup}")
    for pid, reason in skipped.items():
        samples = [i for p, i in todo if p.id == pid]
        if samples:
            on_notice(f"problem {pid!r} skipped: {reason}")
        for i in samples:
            rec = _skipped_record(by_id[pid], i, run.fingerprint, hashes[pid], reason)
            run.append(rec)
            progress.done += 1
            progress.graded += rec["correct"] is not None
            on_progress(progress)
    todo = [(p, i) for p, i in todo if p.id not in skipped]
    if not todo:
        return progress
    longest = max(len(t) for t in prompts.values())
    parallel = min(opts.parallel, len(todo))
    engine = Engine(info, cfg, n_ctx=context_size(parallel, longest, opts.max_tokens),
                    n_seq=parallel + 1, threads=opts.threads, capture=opts.capture,
                    projection=opts.projection, logprobs=opts.logprobs, verbose=verbose,
                    batch_invariant=True, embed=opts.embed)
    jobs = [Job(p.id, i, prompts[p.id]) for p, i in todo]
    progress.start = time.perf_counter()
    with engine, Grader(timeout_s=opts.grade_timeout_s) as grader:
        def step(n: int) -> None:
            progress.tokens += n
            on_progress(progress)

        run_kw = dict(parallel=parallel, max_tokens=opts.max_tokens, seed=opts.seed,
                      should_stop=should_stop, on_step=step)
        if cfg.method == "hapo" and cfg.hapo.rolling:
            finished = _rolling_hapo(engine, jobs, problems, run, cfg, **run_kw)
        else:
            finished = run_jobs(engine, jobs, **run_kw)
        for fin in finished:
            problem = by_id[fin.job.key]
            rec = _record(engine, fin, problem, run.fingerprint, grader, opts.logprobs,
                          hashes[problem.id])
            run.append(rec)
            progress.done += 1
            if rec["correct"] is not None:
                progress.graded += 1
                progress.correct += bool(rec["correct"])
            progress.last = rec
            on_progress(progress)
    return progress


def _prompts(vocab: Runtime, problems: list[Problem], template: str
             ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Each problem's full prompt (chat template applied), its problem hash, and the
    problems whose user message is too large for the model's context by its bytes alone
    (with the reason), which never reach the chat template or the tokenizer."""
    limit = context_limit(vocab.info)
    most_bytes = limit * max_token_bytes(vocab.info)
    chats: dict[str, str] = {}
    hashes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for p in problems:
        user = render(template, p)
        size = len(user.encode("utf-8", "replace"))
        if size > most_bytes:
            skipped[p.id] = (f"the prompt is {size} bytes, more than the model's context of "
                             f"{limit} tokens can hold")
            hashes[p.id] = problem_hash(p.question, p.answer, user)
            continue
        chats[p.id] = vocab.apply_chat_template([{"role": "user", "content": user}])
        hashes[p.id] = problem_hash(p.question, p.answer, chats[p.id])
    return chats, hashes, skipped


def _check_unchanged(run: RunFile, by_id: dict[str, Problem], hashes: dict[str, str]) -> None:
    """Refuse (or with force, restart) a run whose records of a problem were made from
    another question, gold answer or prompt (records without a hash: another gold)."""
    for rec in run.records:
        p = by_id.get(rec["problem_id"])
        if p is None:
            continue
        recorded = rec.get("problem_hash")
        changed = (recorded != hashes[p.id]) if recorded is not None else \
            (rec.get("gold") != p.answer)
        if changed:
            run.refuse_or_restart(
                f"problem {p.id!r} changed since {run.path} was written (its question, gold "
                "answer or prompt differ from the recorded ones); use another -o, or --force "
                "to start a new run (the old file is kept as a backup)")
            return


def _skipped_record(problem: Problem, sample: int, fp: dict, phash: str, reason: str) -> dict:
    rec = {
        "problem_id": problem.id, "sample": sample, **fp, "problem_hash": phash, "text": "",
        "answer": None, "gold": problem.answer,
        "correct": None if problem.answer is None else False,
        "n_tokens": 0, "finish_reason": "skipped", "error": reason, "time_s": 0.0,
    }
    if problem.extra:
        rec["extra"] = problem.extra
    return rec


def _record(engine: Engine, fin, problem: Problem, fp: dict, grader: Grader,
            logprobs: bool, phash: str) -> dict:
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
        "correct": grader.is_correct(problem.answer, answer),
        "n_tokens": len(seq.tokens),
        "finish_reason": seq.finish_reason,
        "time_s": round(fin.time_s, 3),
    }
    if engine.cfg.method == "led":
        rec["led"] = {"explored": seq.explored, "depths": seq.depths}
    # per-token lists: swir's modes; hapo's entropies only where rolling statistics need them
    cfg = engine.cfg
    rec.update(seq.diagnostics(full=cfg.method == "swir" or cfg.hapo.rolling is not None))
    if logprobs:
        rec["logprobs"] = [round(x, 6) for x in seq.logprobs]
    if seq.embedding is not None:
        rec["embedding"] = encode_embedding(seq.embedding)
        rec["embedding_dim"] = int(seq.embedding.shape[0])
    if problem.extra:
        rec["extra"] = problem.extra  # the problem line's other fields, kept as given
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
    from led_local.decoding.hapo import compute_stats

    k = cfg.hapo.rolling
    batch_of = {p.id: i // k for i, p in enumerate(problems)}
    for b in sorted({batch_of[j.key] for j in jobs}):
        prev = [h for r in run.records if batch_of.get(r["problem_id"]) == b - 1
                for h in _recorded_entropies(run, r)]
        engine.hapo_stats = compute_stats(prev, pivot=cfg.hapo.pivot) if b > 0 else None
        yield from run_jobs(engine, [j for j in jobs if batch_of[j.key] == b], **run_kw)
        if run_kw["should_stop"]():
            return


def _recorded_entropies(run: RunFile, rec: dict) -> list[float]:
    """The token entropies a rolling HAPO record carries ([] for a skipped problem or another
    method's record); a malformed list is an error naming the run file and the record."""
    hapo = rec.get("hapo")
    if hapo is None:
        return []
    values = hapo.get("entropies", []) if isinstance(hapo, dict) else None
    if not isinstance(values, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            and x >= 0 for x in values):
        raise LedError(f"{run.path}: problem {rec['problem_id']!r} sample {rec['sample']}: "
                       "'hapo.entropies' must be a list of finite non-negative numbers")
    return [float(x) for x in values]
