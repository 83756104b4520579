"""Run files: one JSON record per finished sample, appended, flushed and fsynced.

A run file is resumable: the (problem_id, sample) pairs it holds are skipped, a torn last line
(a kill mid-write) is cut off, and a file made by a different run configuration is refused
unless the caller forces a new run, in which case the old file is kept beside it as a backup.
Nothing here touches the file until ``open_for_append`` is called, so a command that fails
validation never changes an existing run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from led_local.errors import LedError

FINGERPRINT_KEYS = ("model", "method", "params", "seed", "max_tokens", "prompt_template",
                    "logprobs")


def read_records(path: str | os.PathLike, *, tolerate_torn_tail: bool = True) -> list[dict]:
    """All records of a run file. A torn last line (no newline: a write cut short) is ignored
    unless ``tolerate_torn_tail`` is off; any complete line that is not a record is an error."""
    p = Path(path)
    if not p.is_file():
        raise LedError(f"run file not found: {p}")
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LedError(
                f"{p}:{lineno}: not a JSON record; is this a led-local run file?") from None
        if not isinstance(rec, dict) or "problem_id" not in rec or "sample" not in rec:
            raise LedError(f"{p}:{lineno}: not a led-local sample record")
        records.append(rec)
    if tail.strip() and not tolerate_torn_tail:
        raise LedError(f"{p}: the last line is incomplete")
    return records


class RunFile:
    """The output of ``solve``: checked against ``fingerprint`` (the keys of FINGERPRINT_KEYS
    that define a run) when it already exists."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict, *, force: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.force = force
        self.done: set[tuple[str, int]] = set()
        self.records: list[dict] = []
        self._restart = False
        if self.path.is_dir():
            raise LedError(f"output path is a directory: {self.path}")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise LedError(f"output directory does not exist: {parent}")
        if not os.access(parent, os.W_OK) or (self.path.exists() and
                                              not os.access(self.path, os.W_OK)):
            raise LedError(f"output path is not writable: {self.path}")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load_existing()
        self._file = None

    def _load_existing(self) -> None:
        try:
            records = read_records(self.path)
        except LedError as e:
            if not self.force:
                raise LedError(
                    f"{e} (use --force to start a new run; the old file is kept)") from None
            self._restart = True
            return
        for rec in records:
            diff = [k for k in FINGERPRINT_KEYS if rec.get(k) != self.fingerprint.get(k)]
            if diff:
                if not self.force:
                    k = diff[0]
                    raise LedError(
                        f"{self.path} was made with a different {k} ({rec.get(k)!r}, now "
                        f"{self.fingerprint.get(k)!r}); use another -o, or --force to start a "
                        "new run (the old file is kept as a backup)")
                self._restart = True
                return
        self.records = records
        self.done = {(r["problem_id"], int(r["sample"])) for r in records}

    def open_for_append(self) -> None:
        """Start writing: back the old file up when restarting, cut a torn tail, open."""
        if self._restart:
            backup = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
            self.path.rename(backup)
            self.backup = backup
        elif self.path.exists():
            data = self.path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):  # a torn last line from a killed run
                with self.path.open("r+b") as f:
                    f.truncate(cut)
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        """Write one record as a line, flushed and fsynced, so a kill loses at most it."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add((record["problem_id"], int(record["sample"])))
        self.records.append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
