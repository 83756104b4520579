"""``solve --ray``: the samples of one run decoded by Ray actors, written by the driver alone.

The driver plans the run exactly as ``solve`` does (the same run file checks, resume and
prompts), splits the missing samples into many more shards than workers (by the stable hash
of the problem id, so all samples of a problem travel together), and starts one Ray actor per
worker slot. Each actor checks that its model file has the driver's SHA-256 and build, loads
the model once, and streams every finished sample back as a record; the driver grades it and
appends it to the run file, so resume, torn-line repair and ``--force`` behave as in a plain
``solve``. A sample's tokens depend only on (seed, problem id, sample index), so the records
equal a single-process run's apart from ``time_s``.

When an actor dies (its process killed, its node lost), the samples of its shard that did not
come back are queued again and the slot gets a new actor, which Ray places wherever resources
are free. A shard is tried ``attempts`` times; a slot is refilled ``replacements`` times. What
could not be finished is reported (``ShardsFailed``) after everything else is written.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from led_local.decoding.batch import Job
from led_local.decoding.chatformat import for_model
from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.eval import shards as sharding
from led_local.eval.grading import Grader
from led_local.eval.identity import build_id, model_sha256
from led_local.eval.problems import Problem
from led_local.eval.ray_watchdog import Watchdog
from led_local.eval.ray_worker import SolveWorker
from led_local.eval.solve import Progress, SolveOptions, grade, plan, start_writing, touch
from led_local.llama.gguf_info import ModelInfo, model_info

REACH_TIMEOUT_S = 5.0  # for a Ray address to accept a connection
_watchdogs: list[Watchdog] = []  # of the local instance this process started
_token_env: dict[str, str] = {}  # the authentication token of that instance


class ShardsFailed(LedError):
    """Some samples could not be finished after every retry; the rest of the run is written."""

    def __init__(self, message: str, progress: Progress) -> None:
        super().__init__(message)
        self.progress = progress


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a ``--ray`` run goes.

    ``address``: a Ray cluster (``ray start --head`` prints it; "auto" finds a local one);
    None starts a local Ray instance (or uses the one this process already joined).
    ``workers``: actors [default: the cluster's CPUs / cpus_per_worker, or its GPUs /
    gpus_per_worker, at most one per problem]. ``shards_per_worker`` (default 8): shards per
    actor. ``attempts`` (default 3): tries per shard; ``replacements`` (default 2): new actors
    per slot after its actor died.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shards_per_worker: int = 8
    attempts: int = 3
    replacements: int = 2

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise LedError(f"`ray_workers` must be >= 1, got {self.workers}")
        if not self.cpus_per_worker > 0:
            raise LedError(f"`ray_cpus_per_worker` must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise LedError(f"`ray_gpus_per_worker` must be >= 0, got {self.gpus_per_worker}")
        if self.shards_per_worker < 1 or self.attempts < 1 or self.replacements < 0:
            raise LedError("shards_per_worker and attempts must be >= 1, replacements >= 0")


@dataclass
class _Shard:
    index: int
    jobs: list[Job]
    attempt: int = 1
    left: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.left = {(j.key, j.sample) for j in self.jobs}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LedError("`ray` needs Ray: pip install 'led-local[ray]'") from None
    return ray


def connect(ray_opts: RayOptions, *, verbose: bool = False) -> bool:
    """Join the cluster at ``ray_opts.address`` (or start a local instance); True when this
    call started the connection (the caller then shuts it down)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if ray_opts.address:
        _check_reachable(ray_opts.address)
    elif "RAY_AUTH_MODE" not in os.environ and "RAY_ADDRESS" not in os.environ:
        # Ray trusts whoever reaches its ports, and a local instance listens on every
        # interface: require a token that only this process and its children know
        _token_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    try:
        ray.init(address=ray_opts.address, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=verbose)
    except (ConnectionError, ValueError, RuntimeError) as e:
        _token_auth({})
        where = ray_opts.address or "a local instance"
        raise LedError(f"cannot start or reach Ray at {where}: {e}") from None
    if ray_opts.address is None:  # our own instance: it must die with this process
        _watchdogs.append(Watchdog(ray))
    return True


def disconnect() -> None:
    """Undo a ``connect`` that returned True: shut Ray down and let the watchdog of a local
    instance remove what is left of it."""
    ray = _import_ray()
    ray.shutdown()
    while _watchdogs:
        _watchdogs.pop().close()
    _token_auth({})


def _token_auth(env: dict[str, str]) -> None:
    """Turn Ray's token authentication on for the instance about to start (``env``: its
    variables, which its processes inherit) or back off ({}); Ray caches the mode when it
    loads, so its configuration is reloaded (a Ray without token support: nothing done)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    if not env and not _token_env:
        return
    for name in _token_env:
        os.environ.pop(name, None)
    _token_env.clear()
    _token_env.update(env)
    os.environ.update(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Refuse a HOST:PORT where nothing listens within ``timeout`` seconds (``ray.init``
    would retry for minutes); "auto" and ``ray://`` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise LedError(f"cannot start or reach Ray at {address}: {why} (is a Ray head node "
                       "running there?)") from None


def check_fits(ray_opts: RayOptions) -> None:
    """Refuse a worker that no live node of the cluster can hold (Ray would wait forever)."""
    ray = _import_ray()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if ray_opts.cpus_per_worker > cpus or ray_opts.gpus_per_worker > gpus:
        raise LedError(f"no node of the Ray cluster holds a worker of "
                       f"{ray_opts.cpus_per_worker} CPUs and {ray_opts.gpus_per_worker} GPUs "
                       f"(the largest has {cpus} CPUs and {gpus} GPUs)")


def default_workers(ray_opts: RayOptions) -> int:
    """Actors the cluster's resources hold: CPUs / cpus_per_worker (GPUs when asked)."""
    ray = _import_ray()
    total = ray.cluster_resources()
    n = int(total.get("CPU", 1) // ray_opts.cpus_per_worker)
    if ray_opts.gpus_per_worker > 0:
        n = min(n, int(total.get("GPU", 0) // ray_opts.gpus_per_worker))
    if n < 1:
        raise LedError(f"the Ray cluster has {total.get('CPU', 0)} CPUs and "
                       f"{total.get('GPU', 0)} GPUs: not enough for one worker of "
                       f"{ray_opts.cpus_per_worker} CPUs and {ray_opts.gpus_per_worker} GPUs")
    return n


def solve_ray(
    model: str | os.PathLike | ModelInfo,
    problems: list[Problem],
    out: str | os.PathLike,
    cfg: DecodeConfig,
    opts: SolveOptions,
    ray_opts: RayOptions,
    *,
    template: str,
    on_progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_notice: Callable[[str], None] = lambda message: None,
    verbose: bool = False,
) -> Progress:
    """``solve`` with the decoding spread over Ray actors; the same run file, the same records.

    Raises ShardsFailed (after writing everything that finished) when some samples could not
    be finished, LedError when a worker refuses the model or the build. The driver plans,
    checks problem hashes and writes ``skipped`` records (prompts too large for the context)
    exactly as ``solve`` does; ``on_notice`` gets the same messages.
    """
    ray = _import_ray()
    info = model_info(model)
    cfg = cfg.with_format(for_model(info))  # the run records the marker the engine uses
    todo = plan(info, problems, out, cfg, opts, template=template, verbose=verbose)
    progress, run = todo.progress, todo.run
    if not todo.jobs:
        return touch(todo, on_progress=on_progress, on_notice=on_notice)
    started, pool = False, None
    try:
        started = connect(ray_opts, verbose=verbose)
        n_problems = len({j.key for j in todo.jobs})
        check_fits(ray_opts)
        workers = min(ray_opts.workers or default_workers(ray_opts), n_problems)
        n_shards = min(n_problems, workers * ray_opts.shards_per_worker)
        queue = deque(_Shard(i, jobs) for i, jobs in
                      enumerate(sharding.split(todo.jobs, n_shards, key=lambda j: j.key)) if jobs)
        spec = dict(model_path=str(info.path), sha256=model_sha256(info.path), build=build_id(),
                    cfg=cfg, opts=opts, fingerprint=todo.fingerprint,
                    longest_prompt=todo.longest_prompt,
                    n_jobs=max(len(s.jobs) for s in queue),
                    threads=opts.threads or max(1, int(ray_opts.cpus_per_worker)),
                    verbose=verbose)
        pool = _Pool(ray, ray_opts, workers, spec)
        with Grader(timeout_s=opts.grade_timeout_s) as grader:
            failed = pool.drive(queue, todo, grader, on_progress, should_stop, on_notice)
    finally:
        workers_left = bool(pool and pool.actors)
        if pool is not None:
            pool.close()
        run.close()
        if started:
            disconnect()
    if failed:
        n = sum(len(s.left) for s in failed)
        why = ("no worker was left" if not workers_left else
               f"their workers died {ray_opts.attempts} times")
        raise ShardsFailed(f"{n} samples of {len({k for s in failed for k, _ in s.left})} "
                           f"problems could not be finished ({why}); everything else is "
                           "written: run the command again to retry them", progress)
    return progress


class _Pool:
    """Worker slots, each holding one actor at a time, and the driver's event loop."""

    def __init__(self, ray, ray_opts: RayOptions, workers: int, spec: dict) -> None:
        self.ray = ray
        self.opts = ray_opts
        self.spec = spec
        self.actor_class = ray.remote(SolveWorker).options(
            num_cpus=ray_opts.cpus_per_worker, num_gpus=ray_opts.gpus_per_worker,
            max_restarts=0, max_task_retries=0)
        self.actors: dict[int, object] = {}
        self.replaced = dict.fromkeys(range(workers), 0)
        self.starting: dict[object, int] = {}  # ready() refs -> slot
        self.idle: list[int] = []
        for slot in range(workers):
            self._start(slot)

    def _start(self, slot: int) -> None:
        actor = self.actor_class.remote(**self.spec)
        self.actors[slot] = actor
        self.starting[actor.ready.remote()] = slot

    def _lost(self, slot: int) -> None:
        """The slot's actor died: replace it while the slot has replacements left."""
        self.ray.kill(self.actors.pop(slot), no_restart=True)
        if self.replaced[slot] < self.opts.replacements:
            self.replaced[slot] += 1
            self._start(slot)

    def drive(self, queue: deque, todo, grader: Grader, on_progress, should_stop,
              on_notice) -> list[_Shard]:
        """Run every shard of ``queue``, appending records as they come (the plan's skipped
        records first, once a worker is up); the failed shards."""
        ray, run, progress = self.ray, todo.run, todo.progress
        running: dict[object, tuple[int, _Shard]] = {}  # streaming generators -> slot, shard
        failed: list[_Shard] = []

        def retry(shard: _Shard) -> None:
            shard.jobs = [j for j in shard.jobs if (j.key, j.sample) in shard.left]
            shard.attempt += 1
            (queue.appendleft if shard.attempt <= self.opts.attempts else failed.append)(shard)

        opened = False
        while True:
            while self.idle and queue:
                slot, shard = self.idle.pop(), queue.popleft()
                problems = {j.key: todo.problems[j.key] for j in shard.jobs}
                hashes = {key: todo.hashes[key] for key in problems}
                gen = self.actors[slot].run.options(num_returns="streaming").remote(
                    shard.jobs, problems, hashes)
                running[gen] = (slot, shard)
            if not running and (not self.starting or not queue):
                failed.extend(queue)
                return failed
            ready, _ = ray.wait([*self.starting, *running], num_returns=1, timeout=0.5)
            if should_stop():
                return failed
            for ref in ready:
                if ref in self.starting:
                    slot = self.starting.pop(ref)
                    try:
                        ray.get(ref)
                    except LedError as e:
                        raise LedError(_cause(e)) from None
                    except ray.exceptions.RayActorError:
                        self._lost(slot)
                        continue
                    if not opened:  # the run file changes only once a worker is up
                        start_writing(todo, on_progress=on_progress, on_notice=on_notice)
                        progress.start = time.perf_counter()
                        opened = True
                    self.idle.append(slot)
                    continue
                slot, shard = running[ref]
                try:
                    rec = ray.get(next(ref))
                except StopIteration:
                    del running[ref]
                    self.idle.append(slot)
                    if shard.left:
                        retry(shard)
                    continue
                except LedError as e:
                    raise LedError(_cause(e)) from None
                except ray.exceptions.RayActorError:
                    del running[ref]
                    self._lost(slot)
                    retry(shard)
                    continue
                except ray.exceptions.RayTaskError:  # a bug in the worker: the actor lives
                    del running[ref]
                    self.idle.append(slot)
                    retry(shard)
                    continue
                key = (rec["problem_id"], int(rec["sample"]))
                if key not in shard.left or key in run.done:
                    continue
                shard.left.discard(key)
                run.append(grade(rec, grader))
                progress.add(rec)
                progress.tokens += rec["n_tokens"]
                on_progress(progress)

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()


def _cause(e: Exception) -> str:
    """The message of the LedError a worker raised (without Ray's traceback around it)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, LedError) and cause.args:
        return cause.args[0]  # option names in backquotes, for the CLI to show as flags
    return str(cause) if cause is not None else str(e).strip().splitlines()[-1]
