"""cloud-config (optionally ``## template: jinja``) → plan.

Supported modules: ``bootcmd``, ``write_files``, ``runcmd``; every other top-level key yields a
warning naming it. Order follows cloud-init's module order: bootcmd and write_files run in its
init stage, ``defer: true`` files in the final stage before ``scripts_user`` executes runcmd, so
the plan is bootcmd, write_files, deferred write_files, runcmd.

Differences from cloud-init, all in the direction of failing loudly: unknown ``encoding`` values,
undecodable permissions, missing paths, relative paths and non-boolean ``append``/``defer`` are
errors (cloud-init logs a warning and guesses); ``source`` URLs are never fetched; each runcmd
entry is its own step, so commands stop at the first failure and do not share a shell unless
commands-as-script is chosen (see ``script.py``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import zlib
from typing import Any

import yaml

from capi_remote.bootstrap.budget import Budget, expanded_size
from capi_remote.bootstrap.errors import DOCUMENT, HEADER, BootstrapParseError
from capi_remote.bootstrap.jinja import JINJA_HEADER, InstanceMetadata, render_jinja
from capi_remote.bootstrap.plan import (
    BootstrapPlan,
    Phase,
    RunCommand,
    Step,
    WriteFile,
    check_mode,
    check_owner,
    normalise_path,
)
from capi_remote.bootstrap.script import combine_commands

# Decompressed size limit per file: a 1 MiB Secret can otherwise inflate to a gigabyte.
MAX_FILE_BYTES = 64 << 20

# encoding value → decoding steps, applied in order (cloud-init's canonicalize_extraction).
_ENCODINGS: dict[str, tuple[str, ...]] = {
    "": (),
    "text/plain": (),
    "b64": ("base64",),
    "base64": ("base64",),
    "gz": ("gzip",),
    "gzip": ("gzip",),
    "gz+b64": ("base64", "gzip"),
    "gz+base64": ("base64", "gzip"),
    "gzip+b64": ("base64", "gzip"),
    "gzip+base64": ("base64", "gzip"),
}
_WRITE_FILE_KEYS = frozenset(
    {"path", "content", "encoding", "permissions", "owner", "append", "defer", "source"}
)
_KIND_NAMES = {str: "string", bool: "boolean"}
_OCTAL = re.compile(r"(?:0[oO]?)?[0-7]+")
_WHITESPACE = re.compile(rb"\s+")


def parse_cloud_config(
    data: bytes,
    *,
    metadata: InstanceMetadata,
    commands_as_script: bool = False,
    budget: Budget | None = None,
) -> BootstrapPlan:
    """Parse cloud-config bytes; ``commands_as_script`` folds each command section into one step."""
    budget = budget or Budget()
    try:
        text = data.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        raise BootstrapParseError(DOCUMENT, "bootstrap data is not valid UTF-8") from None
    header, _, rest = text.partition("\n")
    rendered = bool(JINJA_HEADER.fullmatch(header.strip()))
    if rendered:
        text = render_jinja(rest, metadata, budget).lstrip()
        header = text.partition("\n")[0]
    if header.strip().lower() != "#cloud-config":
        raise BootstrapParseError(
            HEADER, "bootstrap data must start with '#cloud-config' or '## template: jinja'"
        )
    document = _load_yaml(text, "rendered document" if rendered else "document", budget)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise BootstrapParseError(DOCUMENT, "cloud-config must be a mapping")

    warnings: list[str] = []
    for key in document:
        if key not in ("bootcmd", "write_files", "runcmd"):
            warnings.append(
                f"cloud-config module {display_key(key)} is not supported and was ignored"
            )
    instance_env = (("INSTANCE_ID", metadata.instance_id),) if metadata.instance_id else ()
    bootcmd = _commands(document.get("bootcmd"), "bootcmd", "bootcmd", instance_env)
    runcmd = _commands(document.get("runcmd"), "runcmd", "runcmd", ())
    files = _write_files(document.get("write_files"), warnings, budget)
    if commands_as_script:
        bootcmd = [combine_commands(bootcmd)] if bootcmd else []
        runcmd = [combine_commands(runcmd)] if runcmd else []
    steps: list[Step] = [
        *bootcmd,
        *(f for f in files if not f.deferred),
        *(f for f in files if f.deferred),
        *runcmd,
    ]
    return BootstrapPlan(
        steps=tuple(steps),
        warnings=tuple(warnings),
        format="script" if commands_as_script else "cloud-config",
    )


def display_key(key: object) -> str:
    """A key as warnings show it: quoted, escaped, truncated."""
    text = key if isinstance(key, str) else repr(key)
    text = text.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= 64 else text[:61] + "...")


def decode_base64(data: bytes, key: str, budget: Budget) -> bytes:
    """Strict base64 (whitespace such as line wrapping allowed)."""
    budget.charge(len(data) * 3 // 4, key)
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", data), validate=True)
    except (binascii.Error, ValueError):
        raise BootstrapParseError(key, "content is not valid base64") from None


def gunzip(data: bytes, key: str, budget: Budget) -> bytes:
    """gzip (possibly multi-member), never decompressing past the file cap or the budget."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            result = stream.read(min(MAX_FILE_BYTES, max(budget.remaining, 0)) + 1)
    except (OSError, EOFError, zlib.error):
        raise BootstrapParseError(key, "content is not valid gzip data") from None
    if len(result) > MAX_FILE_BYTES:
        raise BootstrapParseError(key, f"decompressed content exceeds {MAX_FILE_BYTES} bytes")
    budget.charge(len(result), key)
    return result


def encode_text(text: str, key: str) -> bytes:
    """UTF-8 bytes of ``text``; YAML escapes can produce lone surrogates that have none."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BootstrapParseError(key, "text is not valid UTF-8") from None


def _load_yaml(text: str, what: str, budget: Budget) -> object:
    """YAML errors say where (in ``what``, which may be the output of a template), not what.

    The node graph is charged, aliases expanded, before any Python object is built.
    """
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            budget.charge(expanded_size(root), DOCUMENT)
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except (BootstrapParseError, MemoryError):  # MemoryError: the sandbox's limit, reported there
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1} of the {what}" if mark else ""
        # ``problem`` names the kind of error; the snippet PyYAML appends to str(exc) is data.
        problem = (exc.problem or "syntax error")[:100]
        raise BootstrapParseError(DOCUMENT, f"invalid YAML{where}: {problem}") from None
    except Exception as exc:  # the YAML library's own failures on hostile input
        raise BootstrapParseError(DOCUMENT, f"invalid YAML ({type(exc).__name__})") from None


def _optional(
    item: dict[Any, Any], name: str, key: str, kind: type[str] | type[bool], default: Any
) -> Any:
    value = item.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BootstrapParseError(f"{key}.{name}", f"must be a {_KIND_NAMES[kind]}")
    return value


def _write_files(value: object, warnings: list[str], budget: Budget) -> list[WriteFile]:
    entries = _list(value, "write_files")
    return [
        _write_file(item, f"write_files[{i}]", warnings, budget) for i, item in enumerate(entries)
    ]


def _write_file(item: object, key: str, warnings: list[str], budget: Budget) -> WriteFile:
    if not isinstance(item, dict):
        raise BootstrapParseError(key, "must be a mapping")
    for name in item:
        if name not in _WRITE_FILE_KEYS:
            warnings.append(f"{key}: key {display_key(name)} is not supported and was ignored")
    if item.get("source") is not None:
        raise BootstrapParseError(f"{key}.source", "remote sources are never fetched")
    path = _optional(item, "path", key, str, None)
    if not path:
        raise BootstrapParseError(f"{key}.path", "a path is required")
    try:
        path = normalise_path(path)
    except ValueError as exc:
        raise BootstrapParseError(f"{key}.path", str(exc)) from None
    return WriteFile(
        path=path,
        content=_content(item, key, budget),
        mode=_permissions(item.get("permissions"), f"{key}.permissions"),
        owner=_owner(item.get("owner"), f"{key}.owner"),
        append=_optional(item, "append", key, bool, False),
        deferred=_optional(item, "defer", key, bool, False),
    )


def _content(item: dict[Any, Any], key: str, budget: Budget) -> bytes:
    encoding = _optional(item, "encoding", key, str, "").strip().lower()
    if encoding not in _ENCODINGS:
        known = ", ".join(name for name in _ENCODINGS if name)
        raise BootstrapParseError(f"{key}.encoding", f"unsupported encoding (use one of {known})")
    raw = item.get("content")
    content_key = f"{key}.content"
    if raw is None:
        content = b""
    elif isinstance(raw, bytes):  # YAML !!binary
        content = raw
    elif isinstance(raw, str):
        content = encode_text(raw, content_key)
    else:
        raise BootstrapParseError(content_key, "must be a string or !!binary")
    for step in _ENCODINGS[encoding]:
        content = (
            decode_base64(content, content_key, budget)
            if step == "base64"
            else gunzip(content, content_key, budget)
        )
    return content


def _permissions(value: object, key: str) -> int:
    """cloud-init's decode_perms: integers as given, strings as octal ("0644", "0o644", "644")."""
    if value is None:
        return 0o644
    if isinstance(value, str) and _OCTAL.fullmatch(value.strip()):
        mode = int(value.strip(), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise BootstrapParseError(key, "must be an octal string such as '0644' or an integer")
    try:
        check_mode(mode)
    except ValueError as exc:
        raise BootstrapParseError(key, str(exc)) from None
    return mode


def _owner(value: object, key: str) -> str | None:
    """cloud-init's extract_usergroup: ``user[:group]``; empty, ``-1`` and ``none`` mean unset."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BootstrapParseError(key, "must be a string 'user' or 'user:group'")
    user, _, group = value.partition(":")
    user, group = _owner_part(user), _owner_part(group)
    owner = f"{user}:{group}" if group else user
    if not owner:
        return None
    try:
        check_owner(owner)
    except ValueError as exc:
        raise BootstrapParseError(key, str(exc)) from None
    return owner


def _owner_part(part: str) -> str:
    part = part.strip()
    return "" if part == "-1" or part.lower() == "none" else part


def _list(value: object, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BootstrapParseError(key, "must be a list")
    return value


def _commands(
    value: object, key: str, phase: Phase, env: tuple[tuple[str, str], ...]
) -> list[RunCommand]:
    """cloud-init's shellify input: strings run by a shell, lists are argv, nulls are skipped."""
    commands = []
    for i, entry in enumerate(_list(value, key)):
        entry_key = f"{key}[{i}]"
        if entry is None:
            continue
        try:
            if isinstance(entry, str):
                commands.append(RunCommand(shell=entry, phase=phase, env=env))
            elif isinstance(entry, list) and entry:
                argv = tuple(_argv_item(arg, f"{entry_key}[{j}]") for j, arg in enumerate(entry))
                commands.append(RunCommand(argv=argv, phase=phase, env=env))
            else:
                raise BootstrapParseError(entry_key, "must be a string or a non-empty list")
        except ValueError as exc:
            raise BootstrapParseError(entry_key, str(exc)) from None
    return commands


def _argv_item(value: object, key: str) -> str:
    # cloud-init str()s every item; integers are the only non-strings that survive that intact.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python converts (a hex literal can get there)
            raise BootstrapParseError(key, "integer too large") from None
    raise BootstrapParseError(key, "argv items must be strings")
