"""Run files: one JSON record per finished sample, appended, flushed and fsynced.

Guarantees (the README's "Run files" section says the same):

- One writer. A run file is owned through an exclusive ``fcntl.flock`` on ``RUN.lock`` beside
  it (``RunLock``); the lock dies with its process, and a second writer fails at once naming
  the holder's pid. Anything that rewrites or moves a run file (``RunFile``, a merge) holds it.
- Never overwritten. A file is treated as a run file only when its first line is a sample
  record (``problem_id`` and ``sample`` first, as ``RunFile`` writes them) or, when it holds no
  complete line yet, the beginning of one (a kill during the first write). Anything else given
  as an output is refused; ``force`` moves it (or a run of another configuration) aside to a
  backup name that never existed before (``RUN.jsonl.<time>[.<n>].bak``, created with a hard
  link, which cannot replace an existing path) and says where.
- Resumable. A torn last line (a kill mid-write) is cut off when writing resumes; a complete
  last record without its newline is kept and gets the newline. A write that fails (disk
  full, file too large, read-only) is an ``OutputError``: the records before it are intact.
- Validated. Reading checks every record's types and refuses duplicated (problem_id, sample)
  pairs, each error naming the file and line (``records.py``).

Nothing here changes an existing run until ``open_for_append``: a command that fails its
checks leaves the run as it was (the lock file aside, which is removed on release).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path

from led_local.errors import LedError, OutputError
from led_local.eval.records import (
    RECORD_PREFIX,
    check_not_input,
    is_record_line,
    parses,
    problem_hash,
    read_records,
    split_lines,
)

__all__ = ["FINGERPRINT_KEYS", "RunFile", "RunLock", "RunLockedError", "check_not_input",
           "problem_hash", "read_records"]

FINGERPRINT_KEYS = ("model", "model_sha256", "method", "params", "seed", "max_tokens",
                    "prompt_template", "logprobs", "embed", "chat_template_kwargs", "grammar",
                    "build", "depth_logits")
_write = os.write  # the one syscall that appends records (tests inject failures here)


class RunLockedError(LedError):
    """Another process holds a run file's lock."""


class RunLock:
    """Exclusive ownership of the run file ``path``: ``flock`` on ``<path>.lock``, which holds
    the owner's pid. ``acquire`` fails at once (RunLockedError naming the holder's pid) when
    another process holds it; the lock dies with the process that holds it (kill -9
    included). ``release`` removes the lock file. Use as a context manager.

    The lock file is never followed through a symbolic link and must be a regular file with
    one name (a planted link or hard link would make the pid land in another file).
    ``reader`` (a merge's inputs): where the lock file cannot be created (a read-only
    directory) an existing one is locked as it is, and a missing one means that no writer
    can hold it (a writer must create it first); a reader never writes nor removes it."""

    def __init__(self, path: str | os.PathLike, *, reader: bool = False) -> None:
        self.run_path = Path(path)
        self.path = self.run_path.with_name(self.run_path.name + ".lock")
        self.reader = reader
        self._fd: int | None = None
        self._owned = False  # we created or rewrote the lock file: remove it on release

    def _open(self) -> int | None:
        """The lock file's descriptor (None: a reader's lock that cannot exist)."""
        nofollow = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        except OSError as e:
            err = e
        if err.errno == errno.ELOOP:
            raise LedError(f"the lock file {self.path} is a symbolic link: led-local never "
                           "follows one; remove it") from None
        if self.reader and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            try:
                return os.open(self.path, os.O_RDONLY | nofollow)
            except FileNotFoundError:
                return None
            except OSError as e:
                err = e
        raise LedError(f"cannot create the lock file {self.path}: {err.strerror}") from None

    def _check_regular(self, fd: int) -> None:
        st = os.fstat(fd)
        problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
                   "has other hard links" if st.st_nlink > 1 else None)
        if problem:
            os.close(fd)
            raise LedError(f"the lock file {self.path} {problem}: led-local writes its pid "
                           "there; remove it")

    def acquire(self) -> None:
        if self._fd is not None:
            return
        while True:
            fd = self._open()
            if fd is None:
                self._fd = -1
                return
            self._check_regular(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.run_path} is being written by another led-local process (pid "
                    f"{self._holder()}); wait for it to finish or stop it") from None
            # a releasing owner unlinks the file before unlocking: lock the file at the path
            try:
                st = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            own = os.fstat(fd)
            if st is not None and (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._owned = True
        except OSError:
            if not self.reader:
                os.close(fd)
                raise LedError(f"cannot write the lock file {self.path}") from None
        self._fd = fd

    def _holder(self) -> str:
        for _ in range(20):  # the holder writes its pid just after locking
            with contextlib.suppress(OSError):
                text = self.path.read_text().strip()
                if text.isdigit():
                    return text
            time.sleep(0.025)
        return "unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd >= 0:
            if self._owned:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(self._fd)  # closing drops the lock
        self._fd = None
        self._owned = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def backup(path: Path) -> Path:
    """Move ``path`` to a fresh ``<name>.<time>[.<n>].bak`` beside it and return that name;
    an existing path is never replaced (hard link, then unlink). The caller holds the lock."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(10_000):
        target = path.with_name(f"{path.name}.{stamp}{f'.{n}' if n else ''}.bak")
        try:
            os.link(path, target)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise OutputError(f"cannot back up {path}: {e.strerror}") from None
            if target.exists():  # no hard links here: a checked rename, under our lock
                continue
            os.rename(path, target)
            return target
        os.unlink(path)
        return target
    raise OutputError(f"cannot find a free backup name for {path}")


class RunFile:
    """The output of ``solve``, checked against ``fingerprint`` (the keys of FINGERPRINT_KEYS
    that define a run) when it already exists. Construction takes the lock (``close``
    releases it) and loads ``records``/``done``; ``force`` moves an incompatible file aside
    at ``open_for_append`` instead of refusing it (``backup`` is then its new name)."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict, *, force: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.force = force
        self.done: set[tuple[str, int]] = set()
        self.records: list[dict] = []
        self.backup: Path | None = None
        self._restart = False
        self._fd: int | None = None
        if self.path.is_dir():
            raise LedError(f"output path is a directory: {self.path}")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise LedError(f"output directory does not exist: {parent}")
        if not os.access(parent, os.W_OK) or (self.path.exists() and
                                              not os.access(self.path, os.W_OK)):
            raise LedError(f"output path is not writable: {self.path}")
        self.lock = RunLock(self.path)
        self.lock.acquire()
        try:
            if self.path.exists() and self.path.stat().st_size > 0:
                self._load_existing()
        except BaseException:
            self.lock.release()
            raise

    def _load_existing(self) -> None:
        first, newline, _ = self.path.read_bytes().partition(b"\n")
        if newline or parses(first):
            is_run = is_record_line(first)
        else:  # no complete line yet: the beginning of a first record cut short by a kill
            is_run = first.startswith(RECORD_PREFIX) or RECORD_PREFIX.startswith(first)
        if not is_run:
            self.refuse_or_restart(
                f"{self.path} is not a led-local run file (its first line is not a sample "
                "record); use another -o, or `force` to move it aside")
            return
        try:
            records = read_records(self.path)
        except LedError as e:
            self.refuse_or_restart(str(e))
            return
        for rec in records:
            diff = [k for k in FINGERPRINT_KEYS if rec.get(k) != self.fingerprint.get(k)]
            if diff:
                k = diff[0]
                self.refuse_or_restart(
                    f"{self.path} was made with a different {k} ({rec.get(k)!r}, now "
                    f"{self.fingerprint.get(k)!r}); use another -o, or `force` to start a "
                    "new run (the old file is kept as a backup)")
                return
        self.records = records
        self.done = {(r["problem_id"], r["sample"]) for r in records}

    def refuse_or_restart(self, message: str) -> None:
        """Refuse the existing file with ``message``, or with ``force`` plan a new run (the
        old file is moved aside when writing starts)."""
        if not self.force:
            if "`force`" not in message:
                message += " (use `force` to start a new run; the old file is kept)"
            raise LedError(message)
        self._restart = True
        self.records, self.done = [], set()

    def open_for_append(self) -> None:
        """Start writing: move the old file aside when restarting, else cut a torn tail or
        complete a last record that lacks its newline; open for appending."""
        try:
            if self._restart:
                self.backup = backup(self.path)
            elif self.path.exists():
                data = self.path.read_bytes()
                _, tail = split_lines(data)
                if tail.strip() and self.records and _is_last_record(tail, self.records[-1]):
                    with self.path.open("ab") as f:
                        f.write(b"\n")
                elif tail:
                    with self.path.open("r+b") as f:
                        f.truncate(len(data) - len(tail))
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o644)
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror}") from None

    def append(self, record: dict) -> None:
        """Write one record as a line and fsync it, so that a kill loses at most that record.
        A failed write (ENOSPC, EFBIG, EROFS, ...) is cut back off and raises OutputError."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[_write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            name = errno.errorcode.get(e.errno or 0, "error")
            raise OutputError(
                f"cannot write {self.path}: {e.strerror} ({name}); the {len(self.records)} "
                "records before it are intact: run the same command again to resume") from None
        self.done.add((record["problem_id"], record["sample"]))
        self.records.append(record)

    def close(self) -> None:
        """Close the file and release the lock; safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.lock.release()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_last_record(tail: bytes, last: dict) -> bool:
    try:
        return json.loads(tail) == last
    except (ValueError, RecursionError):
        return False
