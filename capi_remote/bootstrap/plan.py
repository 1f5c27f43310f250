"""Steps and plans: what a host must do, in order, to run its bootstrap data.

Invariants:
- Every step is self-contained: the runner can execute step *i* alone (after a restart, on a
  retry) without replaying earlier steps. Parent directories of files are the runner's to create
  (0755, like cloud-init and Ignition do).
- ``digest`` is the hex sha256 of a canonical JSON encoding (sorted keys, ASCII, no whitespace,
  a ``v`` version field) of every field of the step; file contents enter as their own sha256.
  The runner keys its completion markers on (machine UID, step index, step digest), so a changed
  step runs again and an unchanged one does not.
- ``BootstrapPlan.digest`` hashes the ordered step digests; warnings and ``format`` are not part
  of it because they do not change what runs.
- Steps never show file contents or commands in ``repr``: they carry join tokens and keys. Use
  ``describe()`` for logs and conditions.
- The plan never adds the ``/run/cluster-api/bootstrap-success.complete`` check: the bootstrap
  data writes that sentinel itself and the runner checks it after the last step.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from functools import cached_property
from typing import Any, Literal, TypeAlias

import attrs

Phase: TypeAlias = Literal["bootcmd", "runcmd"]
PlanFormat: TypeAlias = Literal["cloud-config", "ignition", "script"]

# Bump when the canonical encoding changes: every marker on every host is invalidated then.
_ENCODING_VERSION = 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OWNER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.$-]{0,63}"
_OWNER = re.compile(rf"(?:{_OWNER_NAME}(?::{_OWNER_NAME})?|:{_OWNER_NAME})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_PROGRAM = re.compile(r"[A-Za-z0-9_./+-]{1,64}")
MAX_MODE = 0o7777


def normalise_path(path: str) -> str:
    """Return ``path`` with ``//``, ``/./`` and a trailing ``/`` removed.

    Raises ``ValueError`` for relative paths, ``..`` components, control characters, ``/``
    itself and strings that are not valid UTF-8 text: each would make the runner act somewhere
    the author did not mean.
    """
    if not path.startswith("/"):
        raise ValueError("path must be absolute")
    if _CONTROL.search(path):
        raise ValueError("path contains control characters")
    _require_utf8(path, "path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("path must not contain '..'")
    if not parts:
        raise ValueError("path must not be '/'")
    return "/" + "/".join(parts)


def check_owner(owner: str) -> None:
    """Accept ``user``, ``user:group`` or ``:group`` (names or numeric ids), as chown does."""
    if not _OWNER.fullmatch(owner):
        raise ValueError("owner must look like 'user', 'user:group' or ':group'")


def check_mode(mode: int) -> None:
    """Accept permission bits including setuid/setgid/sticky, nothing else."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= MAX_MODE:
        raise ValueError("mode must be an integer between 0 and 0o7777")


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")
    _require_utf8(text, what)


def _validate_path(_: object, __: attrs.Attribute[Any], value: str) -> None:
    if normalise_path(value) != value:
        raise ValueError("path is not normalised; use normalise_path()")


def _validate_mode(_: object, __: attrs.Attribute[Any], value: int) -> None:
    check_mode(value)


def _validate_owner(_: object, __: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_owner(value)


def _canonical_digest(doc: dict[str, object]) -> str:
    encoded = json.dumps(
        {"v": _ENCODING_VERSION, **doc},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _size(content: bytes) -> str:
    return f"<{len(content)} bytes>"


def _octal(mode: int) -> str:
    return f"0o{mode:o}"


def _redacted(value: object) -> str:
    return "None" if value is None else "<redacted>"


def _single_quote(word: str) -> str:
    """Quote unconditionally: a quoted word is never a keyword (``if``) or an assignment."""
    return "'" + word.replace("'", "'\"'\"'") + "'"


@attrs.frozen
class WriteFile:
    """Write ``content`` to ``path`` (or append it), then apply ``mode`` and ``owner``.

    ``owner`` ``None`` leaves ownership to whoever writes the file (root, or the SSH user without
    sudo); otherwise it is passed to ``chown``. ``deferred`` files come from cloud-init's
    ``defer: true`` and are ordered after all non-deferred files.
    """

    path: str = attrs.field(validator=_validate_path)
    content: bytes = attrs.field(repr=_size, validator=attrs.validators.instance_of(bytes))
    mode: int = attrs.field(default=0o644, validator=_validate_mode, repr=_octal)
    owner: str | None = attrs.field(default=None, validator=_validate_owner)
    append: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    deferred: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @cached_property
    def digest(self) -> str:
        return _canonical_digest(
            {
                "step": "write_file",
                "path": self.path,
                "content_sha256": hashlib.sha256(self.content).hexdigest(),
                "mode": self.mode,
                "owner": self.owner,
                "append": self.append,
                "deferred": self.deferred,
            }
        )

    def describe(self) -> str:
        """One line for logs and conditions, without the contents."""
        verb = "append to" if self.append else "write"
        extras = f", owner {self.owner}" if self.owner else ""
        extras += ", deferred" if self.deferred else ""
        return f"{verb} {self.path} ({len(self.content)} bytes, mode {self.mode:04o}{extras})"


@attrs.frozen
class MakeDirectory:
    """``mkdir -p path``, then apply ``mode`` and ``owner`` to the last component only."""

    path: str = attrs.field(validator=_validate_path)
    mode: int = attrs.field(default=0o755, validator=_validate_mode, repr=_octal)
    owner: str | None = attrs.field(default=None, validator=_validate_owner)

    @cached_property
    def digest(self) -> str:
        return _canonical_digest(
            {"step": "make_directory", "path": self.path, "mode": self.mode, "owner": self.owner}
        )

    def describe(self) -> str:
        """One line for logs and conditions."""
        extras = f", owner {self.owner}" if self.owner else ""
        return f"create directory {self.path} (mode {self.mode:04o}{extras})"


@attrs.frozen
class RunCommand:
    """One command: ``argv`` executed without shell interpretation, or ``shell`` run by ``sh -c``.

    Exactly one of the two is set. ``env`` holds extra environment variables (cloud-init gives
    bootcmd ``INSTANCE_ID``). ``to_shell()`` is the command line the runner sends over SSH.
    """

    argv: tuple[str, ...] | None = attrs.field(default=None, repr=_redacted)
    shell: str | None = attrs.field(default=None, repr=_redacted)
    phase: Phase = "runcmd"
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=_redacted)

    def __attrs_post_init__(self) -> None:
        if (self.argv is None) == (self.shell is None):
            raise ValueError("exactly one of argv and shell must be set")
        if self.argv is not None:
            if not isinstance(self.argv, tuple) or not self.argv:
                raise ValueError("argv must be a non-empty tuple")
            if not self.argv[0]:
                raise ValueError("argv[0] (the program) must not be empty")
            for arg in self.argv:
                if not isinstance(arg, str):
                    raise ValueError("argv items must be strings")
                _check_text(arg, "argv item")
        if self.shell is not None:
            if not isinstance(self.shell, str):
                raise ValueError("shell must be a string")
            _check_text(self.shell, "shell command")
        if self.phase not in ("bootcmd", "runcmd"):
            raise ValueError("phase must be 'bootcmd' or 'runcmd'")
        for name, value in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError("environment variable names must be shell identifiers")
            _check_text(value, "environment value")

    @cached_property
    def digest(self) -> str:
        return _canonical_digest(
            {
                "step": "run_command",
                "argv": None if self.argv is None else list(self.argv),
                "shell": self.shell,
                "phase": self.phase,
                "env": [list(pair) for pair in self.env],
            }
        )

    def to_shell(self) -> str:
        """A POSIX ``sh`` command line that runs exactly this command.

        argv: every word is quoted, the program name unconditionally, so ``$``, quotes,
        backslashes, newlines and globs reach the program literally. shell: ``sh -c '<script>'``.
        """
        prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in self.env)
        if self.argv is not None:
            words = [_single_quote(self.argv[0]), *map(shlex.quote, self.argv[1:])]
            return prefix + " ".join(words)
        assert self.shell is not None
        return f"{prefix}sh -c {shlex.quote(self.shell)}"

    def describe(self) -> str:
        """One line for logs and conditions, without arguments (they may hold tokens)."""
        if self.argv is not None:
            program = self.argv[0] if _PLAIN_PROGRAM.fullmatch(self.argv[0]) else "<program>"
            return f"{self.phase}: {program} with {len(self.argv) - 1} argument(s)"
        assert self.shell is not None
        return f"{self.phase}: shell command ({len(self.shell.splitlines())} line(s))"


Step: TypeAlias = WriteFile | MakeDirectory | RunCommand


@attrs.frozen
class BootstrapPlan:
    """The ordered steps for one bootstrap, plus what was ignored (``warnings``)."""

    steps: tuple[Step, ...]
    warnings: tuple[str, ...] = ()
    format: PlanFormat = "cloud-config"

    @cached_property
    def digest(self) -> str:
        """Changes whenever any step, or their order, changes."""
        return _canonical_digest({"plan": [step.digest for step in self.steps]})
