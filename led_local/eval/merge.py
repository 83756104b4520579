"""``led-local merge``: shard run files -> one run file, exactly what one machine would write.

Every record of every input must carry the same fingerprint (model file and its SHA-256,
method, parameters, run seed, prompt template, max tokens, build). A (problem, sample) found
twice is dropped if both records agree apart from timing, and refused if they differ. With the
expected problems, every missing (problem, sample) is counted and the first 1,000 listed. The
output is written to a fresh temporary file, fsynced and renamed over ``out``, so a reader
never sees half a merge. The merge holds the run-file lock (``RunLock``) of ``out`` and of
every input throughout, so it never reads a shard that a ``solve`` is still writing, nor races
another writer of ``out``; an input in a read-only directory is read without creating its lock
(no writer can hold one there).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from led_local.errors import LedError, OutputError
from led_local.eval.problems import Problem
from led_local.eval.runfile import FINGERPRINT_KEYS, RunLock, read_records

TIMING_KEYS = frozenset({"time_s"})
MAX_LISTED = 1000  # missing (problem, sample) pairs listed; the rest are counted


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
    missing: list[tuple[str, int]] = field(default_factory=list)  # the first MAX_LISTED
    unexpected: int = 0
    n_missing: int = 0  # all missing samples (a sample index may be huge: never all listed)
    n_missing_problems: int = 0

    def summary(self) -> str:
        """One line for stderr."""
        line = (f"merged {self.inputs} file{'s' * (self.inputs != 1)} into {self.out}: "
                f"{self.records} records of {self.problems} problems, "
                f"{self.duplicates} agreeing duplicates dropped")
        if self.unexpected:
            line += f", {self.unexpected} records of problems not in --expect"
        if self.n_missing:
            line += f"; {self.n_missing} samples of {self.n_missing_problems} problems missing"
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
        target = out.resolve()
        locks.enter_context(RunLock(target))
        for path in dict.fromkeys(Path(p).resolve() for p in inputs):
            if path != target:  # an input only read: its directory may be read-only
                locks.enter_context(RunLock(path, reader=True))
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
        _count_missing(result, merged, list(dict.fromkeys(p.id for p in expect)), n)
        result.unexpected = sum(pid not in ids for pid, _ in merged)
    write_atomically(out, records)
    return result


def _count_missing(result: MergeResult, merged: dict, ids: list[str], n: int) -> None:
    """Count the (problem, sample < n) pairs absent from ``merged`` and list the first
    MAX_LISTED, in time linear in the records (``n`` may be 10**12)."""
    present: dict[str, list[int]] = {pid: [] for pid in ids}
    for pid, sample in merged:
        if pid in present and sample < n:
            present[pid].append(sample)
    for pid in ids:
        have = sorted(present[pid])
        if len(have) == n:
            continue
        result.n_missing += n - len(have)
        result.n_missing_problems += 1
        nxt = 0
        for sample in [*have, n]:
            while nxt < sample and len(result.missing) < MAX_LISTED:
                result.missing.append((pid, nxt))
                nxt += 1
            if len(result.missing) >= MAX_LISTED:
                break
            nxt = sample + 1


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
    """Write ``records`` as a run file at ``path``: a fresh temporary file beside it
    (``mkstemp``: an unpredictable name, created exclusively, never through a link), fsync,
    rename, fsync the directory. A failed write removes the temporary file and raises
    OutputError (``path`` is untouched)."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            for rec in records:
                f.write(_line(rec))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _line(rec: dict) -> bytes:
    """One record as a JSON line; text that is not valid Unicode (a lone surrogate read from
    a ``\\ud800`` escape) keeps its escape, so that the record reads back unchanged."""
    try:
        return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(rec) + "\n").encode("ascii")
