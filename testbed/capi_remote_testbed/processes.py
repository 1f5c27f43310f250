"""Child processes of the local environment: logged to files, never orphaned.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so a test run killed with -9 does not leave an etcd or an
apiserver behind; a clean stop sends SIGTERM, waits, then SIGKILLs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages that say why a component failed."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@attrs.define
class ManagedProcess:
    """One long-running child with its output in ``log``."""

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] | None = None
    _popen: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self._popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return self._popen.poll() if self._popen else None

    def describe_failure(self) -> str:
        code = self.exit_code()
        state = "is still running" if code is None else f"exited with code {code}"
        return f"{self.name} {state}; last lines of {self.log}:\n{log_tail(self.log)}"

    def stop(self, grace: float = 10.0) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.terminate()
        try:
            self._popen.wait(grace)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
