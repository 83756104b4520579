"""Planning a solve run: its options and fingerprint, the problems it covers (``--limit``,
``--shard``), the run file's checks (problem hashes), the prompts and the missing samples.

Shared by ``solve`` and ``solve --ray`` (whose driver plans exactly as ``solve`` does, so
the two write the same records). Nothing here decodes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from led_local.decoding.batch import Job
from led_local.decoding.methods import DecodeConfig
from led_local.errors import ContextFullError, LedError
from led_local.eval import shards
from led_local.eval.identity import build_id, model_sha256
from led_local.eval.problems import Problem, render
from led_local.eval.runfile import RunFile, problem_hash
from led_local.llama.gguf_info import ModelInfo, model_info
from led_local.llama.grammar import Grammar
from led_local.llama.projection import depth_logits, resolve_projection
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
    shard: tuple[int, int] | None = None  # (I, N): only the problems of shard I of N
    grammar: Grammar | None = None  # every sample's constraint (--json-schema, --grammar)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise LedError(f"-n must be >= 1, got {self.samples}")
        if self.parallel < 1:
            raise LedError(f"`parallel` must be >= 1, got {self.parallel}")
        if self.max_tokens < 1:
            raise LedError(f"`max_tokens` must be >= 1, got {self.max_tokens}")
        if self.limit is not None and self.limit < 1:
            raise LedError(f"`limit` must be >= 1, got {self.limit}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise LedError(f"`shard` I/N needs 0 <= I < N, got {self.shard[0]}/{self.shard[1]}")


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

    def add(self, rec: dict) -> None:
        """Count one newly written record."""
        self.done += 1
        if rec["correct"] is not None:
            self.graded += 1
            self.correct += bool(rec["correct"])
        self.last = rec


def fingerprint(model: str | os.PathLike | ModelInfo, cfg: DecodeConfig, opts: SolveOptions,
                template: str) -> dict:
    """The fields that must agree for a run file to be resumed or merged (``embed`` only when
    on and ``chat_template_kwargs`` only when the template gets any, so a run without them
    has the same records as before the options existed)."""
    p = Path(model.path if isinstance(model, ModelInfo) else model)
    fp = {
        "model": f"{p.name}:{p.stat().st_size}",
        "model_sha256": model_sha256(p),
        "build": build_id(),
        "method": cfg.method,
        "params": cfg.params(),
        "seed": opts.seed,
        "max_tokens": opts.max_tokens,
        "prompt_template": hashlib.sha256(template.encode()).hexdigest()[:16],
        "logprobs": opts.logprobs,
    }
    if cfg.unit.reads_states:  # (absent for the others: their records are as they were)
        info = model_info(model)
        path = resolve_projection(opts.projection, info, cfg.unit.graph_refusal(info, cfg))
        fp["depth_logits"] = depth_logits(info, path)
    if opts.embed:
        fp["embed"] = True
    if opts.grammar is not None:
        fp["grammar"] = hashlib.sha256(opts.grammar.text.encode()).hexdigest()[:16]
    if isinstance(model, ModelInfo) and model.chat_vars:  # the thinking switches, as rendered
        fp["chat_template_kwargs"] = dict(sorted(model.chat_vars.items()))
    return fp


@dataclass
class Plan:
    """What is left to do in a run: the validated, locked run file (not yet opened for
    writing), its fingerprint, the problems by id, the missing samples as jobs (prompts
    tokenized), the progress so far, each problem's hash and the ``skipped`` records still to
    write for missing samples whose prompt cannot fit the model's context."""

    run: RunFile
    fingerprint: dict
    problems: dict[str, Problem]
    jobs: list[Job]
    progress: Progress
    hashes: dict[str, str] = field(default_factory=dict)  # problem id -> problem_hash
    skipped: list[dict] = field(default_factory=list)  # records of prompts too large to run

    @property
    def longest_prompt(self) -> int:
        return max((len(j.tokens) for j in self.jobs), default=1)


def plan(model: ModelInfo, problems: list[Problem], out: str | os.PathLike, cfg: DecodeConfig,
         opts: SolveOptions, *, template: str, verbose: bool = False) -> Plan:
    """Select the problems (``--limit``, then ``--shard``), lock and check the run file
    (fingerprint, problem hashes: a changed problem is refused, or with ``force`` restarts the
    run) and list the (problem, sample) records it lacks; nothing is written. The caller
    closes ``Plan.run``."""
    problems = problems[: opts.limit] if opts.limit else problems
    if opts.shard is not None:
        problems = shards.select(problems, *opts.shard)
    fp = fingerprint(model, cfg, opts, template)
    run = RunFile(out, fp, force=opts.force)  # locks; validates before anything is written
    try:
        return _plan(run, model, problems, opts, template=template, verbose=verbose)
    except BaseException:
        run.close()
        raise


def _plan(run: RunFile, model: ModelInfo, problems: list[Problem], opts: SolveOptions, *,
          template: str, verbose: bool) -> Plan:
    by_id = {p.id: p for p in problems}
    with Runtime(model.path, info=model, vocab_only=True, verbose=verbose) as vocab:
        chats, hashes, too_large = _prompts(vocab, problems, template)
        _check_unchanged(run, by_id, hashes)
        wanted = [(p, i) for p in problems for i in range(opts.samples)]
        todo = [(p, i) for p, i in wanted if (p.id, i) not in run.done]
        prompts: dict[str, tuple[int, ...]] = {}
        for pid in dict.fromkeys(p.id for p, _ in todo):  # only the prompts left to run
            if pid in too_large:
                continue
            try:  # size checked by bytes, then tokens, before llama.cpp's tokenizer sees it
                prompts[pid] = tuple(vocab.tokenize(chats[pid], limit=context_limit(model) - 1))
            except ContextFullError as e:
                too_large[pid] = str(e)
    progress = Progress(total=len(wanted), done=len(wanted) - len(todo))
    for rec in run.records:
        if rec.get("correct") is not None:
            progress.graded += 1
            progress.correct += bool(rec["correct"])
    skipped = [_skipped_record(by_id[p.id], i, run.fingerprint, hashes[p.id], too_large[p.id])
               for p, i in todo if p.id in too_large]
    jobs = [Job(p.id, i, prompts[p.id]) for p, i in todo if p.id not in too_large]
    return Plan(run, run.fingerprint, by_id, jobs, progress, hashes, skipped)


def start_writing(todo: Plan, *, on_progress: Callable[[Progress], None],
                  on_notice: Callable[[str], None]) -> None:
    """Open the run file for appending (saying where a forced restart moved the old file)
    and write the plan's ``skipped`` records, one notice per skipped problem."""
    run, progress = todo.run, todo.progress
    run.open_for_append()
    if run.backup is not None:
        on_notice(f"the old {run.path} was moved to {run.backup}")
    noticed: set[str] = set()
    for rec in todo.skipped:
        if rec["problem_id"] not in noticed:
            noticed.add(rec["problem_id"])
            on_notice(f"problem {rec['problem_id']!r} skipped: {rec['error']}")
        run.append(rec)
        progress.add(rec)
        on_progress(progress)
    todo.skipped = []


def touch(todo: Plan, *, on_progress: Callable[[Progress], None] = lambda p: None,
          on_notice: Callable[[str], None] = lambda message: None) -> Progress:
    """A plan without jobs: write its skipped records, and leave the run file even when it
    has nothing (empty for a shard without problems), so that every shard of a split can be
    merged; closes the run and returns its progress."""
    if todo.skipped or not todo.run.path.exists():
        start_writing(todo, on_progress=on_progress, on_notice=on_notice)
    todo.run.close()
    return todo.progress


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
                "answer or prompt differ from the recorded ones); use another -o, or `force` "
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
