"""Ignition (JSON, spec 3.0.0 to 3.4.0 and 2.0.0 to 2.3.0) → plan.

Ignition normally runs once from the initramfs, before the real system boots: it writes files and
units and *enables* units through a systemd preset file; the boot that follows then starts every
enabled unit. A bootstrap over SSH happens on a system that is already up, so to reach the state
that first boot reaches we must also start the enabled units. The plan therefore ends with
``systemctl daemon-reload``, the enable/disable/mask/unmask commands in unit order, and one
``systemctl start`` of all enabled units (one transaction, so systemd orders them by their
dependencies as it would at boot). CAPI's Ignition output depends on this: its
``kubeadm.service`` (oneshot) runs kubeadm and writes the bootstrap sentinel.

Supported: ``storage.files`` (data URLs only, gzip, verification hashes, mode, user/group, v3
``append`` lists, v2 ``append`` flag), ``storage.directories``, ``systemd.units`` (contents,
drop-ins, enabled, mask). Remote sources (http, https, s3, tftp, gs, arn) and referenced configs
are errors: we never fetch. Other sections with content (passwd, disks, filesystems, links, ...)
become warnings; fetch-only settings (timeouts, proxy, TLS CAs) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from typing import Any

from capi_remote.bootstrap.budget import Budget
from capi_remote.bootstrap.cloudconfig import decode_base64, display_key, gunzip
from capi_remote.bootstrap.errors import DOCUMENT, BootstrapParseError
from capi_remote.bootstrap.plan import (
    BootstrapPlan,
    MakeDirectory,
    RunCommand,
    Step,
    WriteFile,
    check_mode,
    check_owner,
    normalise_path,
)

V3_VERSIONS = frozenset({"3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0"})
V2_VERSIONS = frozenset({"2.0.0", "2.1.0", "2.2.0", "2.3.0"})
UNIT_DIR = "/etc/systemd/system"

_REMOTE_SCHEMES = frozenset({"http", "https", "s3", "tftp", "gs", "arn"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_UNIT_SUFFIXES = frozenset(
    {
        ".service",
        ".socket",
        ".device",
        ".mount",
        ".automount",
        ".swap",
        ".target",
        ".path",
        ".timer",
        ".snapshot",
        ".slice",
        ".scope",
    }
)
# No leading '-' (it would read as a systemctl option) and no '/' (it would leave the unit dir).
_UNIT_NAME = re.compile(r"[A-Za-z0-9_\\][A-Za-z0-9_.:@\\-]*")
_HASHES = {"sha512": 128, "sha256": 64}

_TOP_KEYS = frozenset({"ignition", "storage", "systemd", "passwd", "kernelArguments", "networkd"})
_IGNITION_KEYS = frozenset({"version", "config", "timeouts", "security", "proxy"})
_STORAGE_KEYS = frozenset({"files", "directories", "links", "disks", "raid", "filesystems", "luks"})
_NODE_KEYS = frozenset({"path", "overwrite", "mode", "user", "group", "filesystem"})
_FILE_KEYS = _NODE_KEYS | {"contents", "append"}
_RESOURCE_KEYS = frozenset({"source", "compression", "verification", "httpHeaders"})
_UNIT_KEYS = frozenset({"name", "enabled", "enable", "mask", "contents", "dropins"})
_DROPIN_KEYS = frozenset({"name", "contents"})


def parse_ignition(data: bytes, budget: Budget | None = None) -> BootstrapPlan:
    """Parse an Ignition config into directories, files, unit files and systemctl commands."""
    budget = budget or Budget()
    budget.charge(len(data), DOCUMENT)
    try:
        document = json.loads(data)
    except ValueError as exc:  # includes JSONDecodeError and undecodable bytes
        where = (
            f" at line {exc.lineno}, column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise BootstrapParseError(DOCUMENT, f"invalid JSON{where}") from None
    except RecursionError:
        raise BootstrapParseError(DOCUMENT, "invalid JSON (nested too deeply)") from None
    parser = _Parser(budget)
    steps = parser.parse(_mapping(document, DOCUMENT))
    return BootstrapPlan(steps=tuple(steps), warnings=tuple(parser.warnings), format="ignition")


class _Parser:
    """One parse: collects warnings and remembers the spec major version."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.warnings: list[str] = []
        self.v2 = False
        self.paths: set[str] = set()

    def parse(self, document: dict[str, Any]) -> list[Step]:
        self._unknown(document, _TOP_KEYS, "")
        self._ignition_section(_mapping(document.get("ignition"), "ignition", required=True))
        for section in ("passwd", "kernelArguments", "networkd"):
            self._unsupported(document.get(section), section)
        storage = _mapping(document.get("storage"), "storage")
        self._unknown(storage, _STORAGE_KEYS, "storage.")
        for section in ("links", "disks", "raid", "filesystems", "luks"):
            self._unsupported(storage.get(section), f"storage.{section}")
        directories = [
            self._directory(_mapping(entry, key), key)
            for key, entry in _entries(storage.get("directories"), "storage.directories")
        ]
        # Parents before children, as Ignition creates them; stable for equal depth.
        directories.sort(key=lambda d: d.path.count("/"))
        files = [
            self._file(_mapping(entry, key), key)
            for key, entry in _entries(storage.get("files"), "storage.files")
        ]
        systemd = _mapping(document.get("systemd"), "systemd")
        self._unknown(systemd, frozenset({"units"}), "systemd.")
        return [*directories, *files, *self._units(systemd.get("units"))]

    def _ignition_section(self, section: dict[str, Any]) -> None:
        version = section.get("version")
        if not isinstance(version, str) or version not in V3_VERSIONS | V2_VERSIONS:
            raise BootstrapParseError(
                "ignition.version",
                "unsupported spec version (supported: 2.0.0 to 2.3.0, 3.0.0 to 3.4.0)",
            )
        self.v2 = version in V2_VERSIONS
        self._unknown(section, _IGNITION_KEYS, "ignition.")
        config = _mapping(section.get("config"), "ignition.config")
        for name in ("merge", "append", "replace"):
            if _has_content(config.get(name)):
                raise BootstrapParseError(
                    f"ignition.config.{name}", "referenced configs are not supported"
                )

    def _directory(self, entry: dict[str, Any], key: str) -> MakeDirectory:
        self._unknown(entry, _NODE_KEYS, f"{key}.")
        return MakeDirectory(
            path=self._path(entry, key),
            mode=_mode(entry, key, default=0o755),
            owner=_owner(entry, key),
        )

    def _file(self, entry: dict[str, Any], key: str) -> WriteFile:
        self._unknown(entry, _FILE_KEYS, f"{key}.")
        path = self._path(entry, key)
        contents = self._resource(entry.get("contents"), f"{key}.contents")
        appended = entry.get("append")
        if self.v2:
            # v2: ``append: true`` appends ``contents`` to the existing file.
            append = _bool(appended, f"{key}.append")
            content = b"" if contents is None else contents
        else:
            # v3: ``append`` lists resources written after ``contents``; without ``contents``
            # they go after the existing file's data, and with neither the file is only created.
            tail = [
                self._resource(resource, item_key) or b""
                for item_key, resource in _entries(appended, f"{key}.append")
            ]
            append = contents is None
            content = (contents or b"") + b"".join(tail)
        return WriteFile(
            path=path,
            content=content,
            mode=_mode(entry, key, default=0o644),
            owner=_owner(entry, key),
            append=append,
        )

    def _path(self, entry: dict[str, Any], key: str) -> str:
        filesystem = entry.get("filesystem")
        if filesystem is not None and filesystem != "root":
            raise BootstrapParseError(f"{key}.filesystem", "only the root filesystem is supported")
        raw = entry.get("path")
        if not isinstance(raw, str):
            raise BootstrapParseError(f"{key}.path", "a path (string) is required")
        try:
            path = normalise_path(raw)
        except ValueError as exc:
            raise BootstrapParseError(f"{key}.path", str(exc)) from None
        if path in self.paths:
            raise BootstrapParseError(f"{key}.path", f"duplicate path {path}")
        self.paths.add(path)
        return path

    def _resource(self, value: object, key: str) -> bytes | None:
        """The bytes a contents/append object describes, or ``None`` if it has no source."""
        resource = _mapping(value, key)
        self._unknown(resource, _RESOURCE_KEYS, f"{key}.")
        source = resource.get("source")
        if source is None:
            return None
        if not isinstance(source, str):
            raise BootstrapParseError(f"{key}.source", "must be a string")
        data = _data_url(source, f"{key}.source", self.budget)
        compression = resource.get("compression")
        if compression == "gzip":
            data = gunzip(data, f"{key}.source", self.budget)
        elif compression not in (None, ""):
            raise BootstrapParseError(f"{key}.compression", "only gzip is supported")
        verification = _mapping(resource.get("verification"), f"{key}.verification")
        _verify(data, verification.get("hash"), f"{key}.verification.hash")
        return data

    def _units(self, value: object) -> list[Step]:
        files: list[Step] = []
        commands: list[tuple[str, ...]] = []
        start: list[str] = []
        for key, raw in _entries(value, "systemd.units"):
            unit = _mapping(raw, key)
            self._unknown(unit, _UNIT_KEYS, f"{key}.")
            name = _unit_name(unit.get("name"), f"{key}.name", _UNIT_SUFFIXES)
            masked = _optional_bool(unit.get("mask"), f"{key}.mask")
            enabled = _optional_bool(unit.get("enabled"), f"{key}.enabled")
            if enabled is None and self.v2:  # v2's deprecated spelling
                enabled = True if _optional_bool(unit.get("enable"), f"{key}.enable") else None
            for dropin_key, dropin_raw in _entries(unit.get("dropins"), f"{key}.dropins"):
                dropin = _mapping(dropin_raw, dropin_key)
                self._unknown(dropin, _DROPIN_KEYS, f"{dropin_key}.")
                dropin_name = _unit_name(
                    dropin.get("name"), f"{dropin_key}.name", frozenset({".conf"})
                )
                text = _text(dropin.get("contents"), f"{dropin_key}.contents")
                if text:
                    files.append(WriteFile(path=f"{UNIT_DIR}/{name}.d/{dropin_name}", content=text))
            text = _text(unit.get("contents"), f"{key}.contents")
            if text and masked:
                self.warnings.append(f"{key}: contents not written because the unit is masked")
            elif text:
                files.append(WriteFile(path=f"{UNIT_DIR}/{name}", content=text))
            if masked is not None:
                commands.append(("mask" if masked else "unmask", name))
            if enabled and masked:
                self.warnings.append(f"{key}: not enabled because the unit is masked")
            elif enabled is not None:
                commands.append(("enable" if enabled else "disable", name))
                if enabled:
                    start.append(name)
        if not files and not commands:
            return []
        argvs: list[tuple[str, ...]] = [("systemctl", "daemon-reload")]
        argvs += [("systemctl", *command) for command in commands]
        if start:
            argvs.append(("systemctl", "start", *start))
        return [*files, *(RunCommand(argv=argv) for argv in argvs)]

    def _unknown(self, mapping: dict[str, Any], known: frozenset[str], prefix: str) -> None:
        for name in mapping:
            if name not in known:
                self.warnings.append(
                    f"Ignition key {prefix}{display_key(name)} is not supported and was ignored"
                )

    def _unsupported(self, value: object, key: str) -> None:
        if _has_content(value):
            self.warnings.append(f"Ignition section {key} is not supported and was ignored")


def _mapping(value: object, key: str, *, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BootstrapParseError(key, "must be an object")
    return value


def _entries(value: object, key: str) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BootstrapParseError(key, "must be a list")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _has_content(value: object) -> bool:
    """False for null, "", [] and objects holding nothing else (Go marshals empty structs)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif item not in (None, "", []):
            return True
    return False


def _optional_bool(value: object, key: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise BootstrapParseError(key, "must be a boolean")
    return value


def _bool(value: object, key: str) -> bool:
    return _optional_bool(value, key) or False


def _text(value: object, key: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise BootstrapParseError(key, "must be a string")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise BootstrapParseError(key, "text is not valid UTF-8") from None


def _mode(entry: dict[str, Any], key: str, *, default: int) -> int:
    value = entry.get("mode")
    if value is None:
        return default
    try:
        check_mode(value)
    except ValueError:
        raise BootstrapParseError(
            f"{key}.mode", "must be a decimal integer between 0 and 4095 (0o7777)"
        ) from None
    return int(value)


def _owner(entry: dict[str, Any], key: str) -> str | None:
    """``user:group``; a missing half is 0 (root), as Ignition defaults it."""
    user = _id_or_name(entry.get("user"), f"{key}.user")
    group = _id_or_name(entry.get("group"), f"{key}.group")
    if user is None and group is None:
        return None
    owner = f"{user or '0'}:{group or '0'}"
    try:
        check_owner(owner)
    except ValueError as exc:
        raise BootstrapParseError(key, str(exc)) from None
    return owner


def _id_or_name(value: object, key: str) -> str | None:
    spec = _mapping(value, key)
    uid, name = spec.get("id"), spec.get("name")
    if uid is not None and name is not None:
        raise BootstrapParseError(key, "set id or name, not both")
    if uid is not None:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32:
            raise BootstrapParseError(f"{key}.id", "must be a non-negative integer")
        return str(uid)
    if name is not None and not isinstance(name, str):
        raise BootstrapParseError(f"{key}.name", "must be a string")
    return name or None


def _unit_name(value: object, key: str, suffixes: frozenset[str]) -> str:
    if not isinstance(value, str) or not _UNIT_NAME.fullmatch(value):
        raise BootstrapParseError(key, "must be a unit file name without '/' or a leading '-'")
    if not any(value.endswith(suffix) and value != suffix for suffix in suffixes):
        raise BootstrapParseError(key, f"must end with one of {', '.join(sorted(suffixes))}")
    return value


def _data_url(source: str, key: str, budget: Budget) -> bytes:
    """Decode an RFC 2397 ``data:`` URL; every other scheme is refused by name only."""
    match = _SCHEME.match(source)
    if not match:
        raise BootstrapParseError(key, "must be a URL")
    scheme = match.group(1).lower()
    if scheme in _REMOTE_SCHEMES:
        raise BootstrapParseError(
            key, f"{scheme} sources are never fetched; inline the contents as a data URL"
        )
    if scheme != "data":
        raise BootstrapParseError(key, f"unsupported URL scheme {display_key(scheme)}")
    header, comma, payload = source[match.end() :].partition(",")
    if not comma:
        raise BootstrapParseError(key, "malformed data URL (no ',')")
    try:
        data = urllib.parse.unquote_to_bytes(payload)
    except UnicodeEncodeError:
        raise BootstrapParseError(key, "data URL is not valid UTF-8 text") from None
    parameters = header.split(";")
    if len(parameters) > 1 and parameters[-1].strip().lower() == "base64":
        data = decode_base64(data, key, budget)
    return data


def _verify(data: bytes, expected: object, key: str) -> None:
    if expected is None:
        return
    if not isinstance(expected, str):
        raise BootstrapParseError(key, "must be a string '<sha512|sha256>-<hex>'")
    algorithm, _, digest = expected.partition("-")
    if _HASHES.get(algorithm) != len(digest) or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise BootstrapParseError(key, "must be a string '<sha512|sha256>-<hex>'")
    if hashlib.new(algorithm, data).hexdigest() != digest.lower():
        raise BootstrapParseError(key, "contents do not match the verification hash")
