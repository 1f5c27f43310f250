"""Would an existing object pass the CRD validation capi-remote installs? (before installing it)

The reference's CRDs check almost nothing (no port range, no address format); ours do. An object
stored under the old schema that fails the new one is kept by the API server, but any change to
a failing field is refused, and templates with such fields stamp out objects that cannot be
created. The check step lists them before anything changes.

What is checked: the OpenAPI keywords of the structural schema (type, required, enum, minimum,
maximum, minLength, maxLength, pattern, minItems, maxItems, minProperties) and the CEL rules listed
in ``_RULES`` (re-stated in Python, matched by their exact text); other CEL rules are left to the
API server. Invariants (budgets): at most ``MAX_DEPTH`` levels and ``MAX_PROBLEMS`` problems per
object; strings are matched only against our own patterns.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 32
MAX_PROBLEMS = 5
_DNS = re.compile(
    r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*"
)
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: _number(v),
    "boolean": lambda v: isinstance(v, bool),
}


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return _is_ip(value) or (
        _DNS.fullmatch(value) is not None and re.fullmatch(r"[0-9.]+", value) is None
    )


def _credential(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    return any(k in spec for k in ("sshKeyRef", "passwordRef", "provisionJob")) or bool(
        spec.get("pool")
    )


_RULES: dict[str, Callable[[Any], bool]] = {
    "isIP(self) || (self.matches('^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]"
    "([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$') && !self.matches('^[0-9.]+$'))": _address,
    "has(self.sshKeyRef) || has(self.passwordRef) || has(self.provisionJob) || "
    "(has(self.pool) && size(self.pool) > 0)": _credential,
}


def problems(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """What ``obj`` (spec and metadata aside from status) does wrong under ``schema`` (the
    version's ``openAPIV3Schema``); empty when it passes."""
    found: list[str] = []
    spec_schema = (schema.get("properties") or {}).get("spec")
    if spec_schema is not None and "spec" in obj:
        _check(obj["spec"], spec_schema, ".spec", found, 0)
    return found[:MAX_PROBLEMS]


def _check(value: Any, schema: dict[str, Any], path: str, found: list[str], depth: int) -> None:
    if len(found) >= MAX_PROBLEMS or depth > MAX_DEPTH:
        return
    kind = schema.get("type")
    if kind in _TYPES and not _TYPES[kind](value):
        found.append(f"{path}: must be of type {kind}")
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        check = _RULES.get(rule.get("rule", ""))
        if check is not None and not check(value):
            found.append(f"{path}: {rule.get('message') or 'fails a validation rule'}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: must be one of {', '.join(map(str, schema['enum']))}")
    _bounds(value, schema, path, found)
    if isinstance(value, dict):
        _object(value, schema, path, found, depth)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]", found, depth + 1)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sized(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind)


#: keyword, which values it applies to, whether the value breaks the limit, what to say.
_LIMITS: tuple[tuple[str, Callable[[Any], bool], Callable[[Any, Any], bool], str], ...] = (
    ("minimum", _number, lambda v, limit: v < limit, "must be at least {}"),
    ("maximum", _number, lambda v, limit: v > limit, "must be at most {}"),
    ("minLength", _sized(str), lambda v, limit: len(v) < limit, "must not be shorter than {}"),
    ("maxLength", _sized(str), lambda v, limit: len(v) > limit, "must not be longer than {}"),
    ("pattern", _sized(str), lambda v, p: re.search(p, v) is None, "must match {}"),
    ("minItems", _sized(list), lambda v, limit: len(v) < limit, "needs at least {} items"),
    ("maxItems", _sized(list), lambda v, limit: len(v) > limit, "takes at most {} items"),
    ("minProperties", _sized(dict), lambda v, limit: len(v) < limit, "needs at least {} fields"),
)


def _bounds(value: Any, schema: dict[str, Any], path: str, found: list[str]) -> None:
    for keyword, applies, breaks, message in _LIMITS:
        if keyword in schema and applies(value) and breaks(value, schema[keyword]):
            found.append(f"{path}: {message.format(schema[keyword])}")


def _object(
    value: dict[str, Any], schema: dict[str, Any], path: str, found: list[str], depth: int
) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    for name in schema.get("required") or []:
        if name not in value:
            found.append(f"{path}.{name}: required")
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for name, item in value.items():
        sub = properties.get(name) or (extra if isinstance(extra, dict) else None)
        if sub is not None:
            _check(item, sub, f"{path}.{name}", found, depth + 1)
