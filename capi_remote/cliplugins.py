"""What other distributions may plug into the ``capi-remote`` command, and nothing more.

The product knows no plugin by name: the test bed (``capi-remote-testbed``, folder ``testbed/``)
adds ``capi-remote dev`` and a kubectl for ``capi-remote manifests`` through the entry-point
groups below, so the command works without it and the product never imports it.

- :data:`COMMANDS`: each entry point is a :data:`Register`. It adds its subcommands to the
  ``capi-remote`` subparsers and sets ``handler`` (``(argparse.Namespace) -> int``) on each
  with ``set_defaults``.
- :data:`KUBECTL`: each entry point is a :data:`FindKubectl`. It returns the path of a kubectl
  and raises :class:`RuntimeError` when it cannot.
- Handlers raise :class:`UserError` (exit code 2) or :class:`RuntimeFailure` (exit code 1) for
  failures a user can read; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

COMMANDS = "capi_remote.cli"
KUBECTL = "capi_remote.kubectl"

#: Any: the command's subparsers are of its own ArgumentParser subclass.
Register: TypeAlias = Callable[["argparse._SubParsersAction[Any]"], None]
FindKubectl: TypeAlias = Callable[[Callable[[str], None]], Path]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


class RuntimeFailure(Exception):
    """The command ran but failed (exit code 1), e.g. the environment did not start."""
