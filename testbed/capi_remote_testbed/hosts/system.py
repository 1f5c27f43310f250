"""Commands and processes on the real machine: the one way the fleet runs ``ip``/``iptables``,
and how it finds and kills a host's processes.

Invariant: every command runs with :data:`BASE_ENV` (a fixed PATH, ``LANG=C``), never the
caller's environment, so output parsing does not depend on who runs the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


class HostError(RuntimeError):
    """A host or fleet failed to start or to change state; the message carries the log tail."""


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, env=BASE_ENV, check=False
    )
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def child_pid(pid: int) -> int | None:
    """The first child of ``pid`` (unshare's forked child = the host's PID 1)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    if children:
        return int(children[0])
    for stat in Path("/proc").glob("[0-9]*/stat"):  # kernels without CONFIG_PROC_CHILDREN
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                return int(stat.parent.name)
    return None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_hosts(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each host's PID 1 (the kernel then kills its whole PID namespace) and its unshare.

    Waiting for unshare means waiting until PID 1 is reaped, which the kernel only allows once
    every process of the namespace is gone: nothing of the host survives this.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            child = child_pid(proc.pid)
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # --kill-child makes the kernel SIGKILL PID 1 when unshare dies
            proc.wait()
