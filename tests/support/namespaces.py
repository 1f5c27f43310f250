"""A namespace of one test's own, made and removed with kubectl."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Kubectl(Protocol):
    def __call__(self, *args: str, input_text: str | None = None) -> str: ...


@contextlib.contextmanager
def scratch_namespace(kubectl: Kubectl, name: str) -> Iterator[str]:
    """Namespace ``name`` for the block; deleted after it without waiting: its objects'
    finalizers may wait for controllers the test has stopped, and nothing else uses the name."""
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")
