"""What the operator sees: progress lines and tenant-written text made safe for a terminal.

Invariants: every string that comes from the cluster (names, addresses, condition messages) goes
through :func:`shown` before it is printed: control characters (terminal escape sequences a tenant
could write into a message) become ``?`` and the length is capped at ``MAX_SHOWN``. Progress lines
start with a fixed word (``plan``, ``start``, ``info``, ``warn``, ``error``, ``wait``, ``done``,
``skip``) and the step name, so scripts (and the e2e test) can follow them.
"""

from __future__ import annotations

import sys
from typing import Literal, TextIO

import attrs

MAX_SHOWN = 200

Word = Literal["plan", "start", "done", "skip", "wait", "warn", "error", "info"]


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.define
class Progress:
    """Writes one line per event, flushed at once (a kill right after loses nothing printed)."""

    out: TextIO = attrs.field(factory=lambda: sys.stdout)

    def line(self, word: Word, step: str, message: str = "") -> None:
        self.out.write(f"{word:<5} {step}{': ' + message if message else ''}\n")
        self.out.flush()

    def text(self, message: str) -> None:
        self.out.write(message + "\n")
        self.out.flush()
