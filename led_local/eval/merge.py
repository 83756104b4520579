"""``led-local merge``: shard run files -> one run file, exactly what one machine would write.

Every record of every input must carry the same fingerprint (model file and its SHA-256,
method, parameters, run seed, prompt template, max tokens, build). A (problem, sample) found
twice is dropped if both records agree apart from timing, and refused if they differ. With the
expected problems, every missing (problem, sample) is listed. The output is written to a
temporary file, fsynced and renamed over ``out``, so a reader never sees half a merge. The
merge holds the run-file lock (``RunLock``) of ``out`` and of every input throughout, so it
never reads a shard that a ``solve`` is still writing, nor races another writer of ``out``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from led_local.errors import LedError
from led_local.eval.problems import Problem
from led_local.eval.runfile import FINGERPRINT_KEYS, RunLock, read_records

TIMING_KEYS = frozenset({"time_s"})


@dataclass
class MergeResult:
    """What a merge did: records written, agreeing duplicates dropped, and, when the expected
    problems were given, the missing (problem id, sample) pairs and the records of problems
    outside them (kept)."""

    out: Path
    inputs: int
    records: int
    problems: int
    duplicates: int = 0
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: int = 0

    def summary(self) -> str:
        """One line for stderr."""
        line = (f"merged {self.inputs} file{'s' * (self.inputs != 1)} into {self.out}: "
                f"{self.records} records of {self.problems} problems, "
                f"{self.duplicates} agreeing duplicates dropped")
        if self.unexpected:
            line += f", {self.unexpected} records of problems not in --expect"
        if self.missing:
            n_problems = len({pid for pid, _ in self.missing})
            line += f"; {len(self.missing)} samples of {n_problems} problems missing"
        return line


def strip_timing(rec: dict) -> dict:
    """``rec`` without its timing fields: what must agree between two runs of one sample."""
    return {k: v for k, v in rec.items() if k not in TIMING_KEYS}


def merge(out: str | os.PathLike, inputs: list[str | os.PathLike], *,
          expect: list[Problem] | None = None, samples: int | None = None) -> MergeResult:
    """Merge the run files ``inputs`` into ``out`` (which may be one of them).

    ``expect``: the problems the run should cover; ``samples``: samples per problem expected
    (default: one more than the largest sample index found). Raises LedError on a fingerprint
    or seed mismatch, disagreeing duplicates, or an ``out`` that would overwrite anything but
    an input; RunLockedError when another process holds the lock of ``out`` or of an input.
    """
    if not inputs:
        raise LedError("merge needs at least one run file to read")
    if samples is not None and samples < 1:
        raise LedError(f"-n must be >= 1, got {samples}")
    out = Path(out)
    _check_output(out, [Path(p) for p in inputs])
    with contextlib.ExitStack() as locks:
        for path in dict.fromkeys(Path(p).resolve() for p in [out, *inputs]):
            locks.enter_context(RunLock(path))
        return _merge(out, inputs, expect=expect, samples=samples)


def _merge(out: Path, inputs: list[str | os.PathLike], *, expect: list[Problem] | None,
           samples: int | None) -> MergeResult:
    merged: dict[tuple[str, int], tuple[dict, str]] = {}
    ref: tuple[dict, str] | None = None
    duplicates = 0
    for path in inputs:
        for n, rec in enumerate(read_records(path), 1):
            where = f"{path}, record {n}"
            fp = {k: rec.get(k) for k in FINGERPRINT_KEYS}
            if ref is None:
                ref = (fp, where)
            _check_fingerprint(fp, where, *ref)
            key = (rec["problem_id"], int(rec["sample"]))
            if key in merged:
                first, first_where = merged[key]
                if strip_timing(first) != strip_timing(rec):
                    raise LedError(
                        f"problem {key[0]!r} sample {key[1]} differs between {first_where} and "
                        f"{where}: these are not shards of one run; remove one of them")
                duplicates += 1
                continue
            merged[key] = (rec, where)
    order = _order(merged, expect)
    records = [merged[k][0] for k in order]
    result = MergeResult(out=out, inputs=len(inputs), records=len(records),
                         problems=len({pid for pid, _ in order}), duplicates=duplicates)
    if expect is not None:
        n = samples or (1 + max((s for _, s in merged), default=0))
        ids = {p.id for p in expect}
        result.missing = [(p.id, i) for p in expect for i in range(n) if (p.id, i) not in merged]
        result.unexpected = sum(pid not in ids for pid, _ in merged)
    write_atomically(out, records)
    return result


def _check_output(out: Path, inputs: list[Path]) -> None:
    if out.is_dir():
        raise LedError(f"output path is a directory: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise LedError(f"output directory does not exist: {parent}")
    if out.exists() and not any(p.exists() and out.samefile(p) for p in inputs):
        raise LedError(f"{out} exists and is not one of the inputs: name it as an input too "
                       "to merge into it, or choose another output path")


def _check_fingerprint(fp: dict, where: str, ref: dict, ref_where: str) -> None:
    if fp["seed"] != ref["seed"]:
        raise LedError(f"{where}: seed {fp['seed']!r} is not the run seed {ref['seed']!r} of "
                       f"{ref_where}: these are not shards of one run")
    for k in FINGERPRINT_KEYS:
        if fp[k] != ref[k]:
            raise LedError(f"{where}: a different {k} ({fp[k]!r}) than {ref_where} "
                           f"({ref[k]!r}): these are not shards of one run")


def _order(merged: dict, expect: list[Problem] | None) -> list[tuple[str, int]]:
    """Problems in the expected file's order (else first appearance), samples ascending."""
    rank: dict[str, int] = {p.id: i for i, p in enumerate(expect or [])}
    for pid, _ in merged:
        rank.setdefault(pid, len(rank))
    return sorted(merged, key=lambda k: (rank[k[0]], k[1]))


def write_atomically(path: Path, records: list[dict]) -> None:
    """Write ``records`` as a run file at ``path``: temporary file, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LedError(f"cannot write {path}: {e.strerror or e}") from None
    dir_fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
