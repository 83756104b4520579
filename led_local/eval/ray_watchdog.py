"""A local Ray instance dies with the driver that started it.

``ray.init()`` without an address starts gcs_server, raylet and their agents as the driver's
children; when the driver is killed (kill -9 included) they live on for minutes and each run
leaves its ``/tmp/ray/session_*`` directory. ``Watchdog`` starts a small process that holds a
pipe from the driver: when the pipe closes (the driver let go after ``ray.shutdown()``, or
died however it died) it kills what is left of the instance (the processes it started, their
descendants, any process naming the session directory) and removes that directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

# run by the watchdog process (python -c): argv = session directory, then the instance's pids
_SCRIPT = r"""
import os, shutil, signal, sys, time
sys.stdin.buffer.read()  # EOF: the driver closed the pipe or died
session, known = sys.argv[1], {int(p) for p in sys.argv[2:]}
me = os.getuid()

def procs():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}")
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if st.st_uid == me and int(d) != os.getpid():
            out[int(d)] = (ppid, cmd)
    return out

def doomed():
    table = procs()
    found = {p for p in known if p in table}
    found |= {p for p, (_, cmd) in table.items() if session.encode() in cmd}
    grew = True
    while grew:
        more = {p for p, (ppid, _) in table.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    return found

for _ in range(3):  # processes may spawn while they are killed
    for pid in doomed():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.2)
shutil.rmtree(session, ignore_errors=True)
latest = os.path.join(os.path.dirname(session), "session_latest")
try:
    if os.path.realpath(latest) == os.path.realpath(session) or not os.path.exists(latest):
        os.unlink(latest)
except OSError:
    pass
"""


class Watchdog:
    """Started right after ``ray.init()`` started a local instance; ``close()`` after
    ``ray.shutdown()`` (or the driver's death) lets it clean up."""

    def __init__(self, ray) -> None:
        node = ray._private.worker._global_node
        pids = [str(info.process.pid) for infos in node.all_processes.values()
                for info in infos if getattr(info, "process", None) is not None]
        self.session_dir = node.get_session_dir_path()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, self.session_dir, *pids], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True, cwd=os.path.dirname(self.session_dir) or "/")

    def close(self, timeout: float = 15.0) -> None:
        """Let the watchdog clean up, and wait for it."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
