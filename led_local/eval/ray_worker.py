"""The worker side of ``solve --ray``: what one Ray actor runs (see ray_solve for the driver).

Plain Python, no Ray import: the driver wraps the class with ``ray.remote``.
"""

from __future__ import annotations

import socket

from led_local.decoding.batch import Job, run_jobs
from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.eval.identity import build_id, model_sha256
from led_local.eval.problems import Problem
from led_local.eval.solve import SolveOptions, make_engine, sample_record
from led_local.llama.gguf_info import model_info


class SolveWorker:
    """The body of one Ray actor: the model loaded once, shards decoded into records.

    A model file or build that differs from the driver's, or a LedError while loading, is
    kept and raised by every call, which the driver turns into one error for the whole run.
    """

    def __init__(self, model_path: str, sha256: str, build: str, cfg: DecodeConfig,
                 opts: SolveOptions, fingerprint: dict, *, longest_prompt: int, n_jobs: int,
                 threads: int | None, verbose: bool) -> None:
        self.host = socket.gethostname()
        self.error: str | None = None
        self.fingerprint = fingerprint
        self.opts = opts
        try:
            mine = model_sha256(model_path)
            if mine != sha256:
                raise LedError(
                    f"the model file {model_path} on {self.host} has SHA-256 {mine[:16]}..., "
                    f"the driver's has {sha256[:16]}...: every node needs the same file")
            if build_id() != build:
                raise LedError(f"{self.host} runs {build_id()!r}, the driver {build!r}: "
                               "every node needs the same led-local and llama.cpp build")
            self.engine, self.parallel = make_engine(
                model_info(model_path), cfg, opts, longest_prompt=longest_prompt,
                n_jobs=n_jobs, threads=threads, verbose=verbose)
        except LedError as e:
            self.error = e.args[0] if e.args else str(e)  # option names kept for the CLI

    def ready(self) -> str:
        """The worker's host name, once the model is loaded; raises what loading raised."""
        if self.error:
            raise LedError(self.error)
        return self.host

    def run(self, jobs: list[Job], problems: dict[str, Problem], hashes: dict[str, str]):
        """Decode ``jobs``, yielding each finished sample's record (``correct`` still None);
        ``hashes``: each problem's hash, as the driver computed it."""
        if self.error:
            raise LedError(self.error)
        for fin in run_jobs(self.engine, jobs, parallel=self.parallel,
                            max_tokens=self.opts.max_tokens, seed=self.opts.seed):
            yield sample_record(self.engine, fin, problems[fin.job.key], self.fingerprint,
                                None, self.opts.logprobs, hashes[fin.job.key])
