"""Schema metadata carried by the models, so the models stay the one source of truth.

A model field keeps its Python type; what the CRD and the API reference need beyond the type (a
description, a JSON name when camelCase of the attribute is wrong, OpenAPI validation, CEL rules)
rides on ``attrs.field(metadata=doc(...))``. Object-level CEL rules and ``minProperties`` are
attached to a class with :func:`object_rules`. The serialiser, the CRD generator and the docs
generator all read these, which is what keeps the three from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import attrs

_KEY = "capi_remote.api"

T = TypeVar("T", bound=type)

ListType = Literal["atomic", "set", "map"]


@attrs.frozen
class Rule:
    """One ``x-kubernetes-validations`` entry: a CEL rule plus the message a user will read."""

    rule: str
    message: str
    reason: str | None = None
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


@attrs.frozen(kw_only=True)
class FieldInfo:
    """What one model field contributes to the OpenAPI schema besides its type and default."""

    description: str
    json_name: str | None = None
    fmt: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None
    list_type: ListType | None = None
    list_map_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    def validation(self) -> dict[str, Any]:
        """The OpenAPI keywords this field adds to the schema of its type."""
        keywords: dict[str, Any] = {
            "format": self.fmt,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "minLength": self.min_length,
            "maxLength": self.max_length,
            "pattern": self.pattern,
            "minItems": self.min_items,
            "maxItems": self.max_items,
            "x-kubernetes-list-type": self.list_type,
            "x-kubernetes-list-map-keys": list(self.list_map_keys) or None,
            "x-kubernetes-validations": [r.to_schema() for r in self.rules] or None,
        }
        return {k: v for k, v in keywords.items() if v is not None}


def doc(
    description: str,
    *,
    json_name: str | None = None,
    fmt: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    list_type: ListType | None = None,
    list_map_keys: Sequence[str] = (),
    rules: Sequence[Rule] = (),
) -> dict[str, FieldInfo]:
    """Build the ``metadata=`` of an ``attrs.field``; keyword names mirror OpenAPI's."""
    return {
        _KEY: FieldInfo(
            description=description,
            json_name=json_name,
            fmt=fmt,
            minimum=minimum,
            maximum=maximum,
            min_length=min_length,
            max_length=max_length,
            pattern=pattern,
            min_items=min_items,
            max_items=max_items,
            list_type=list_type,
            list_map_keys=tuple(list_map_keys),
            rules=tuple(rules),
        )
    }


def field_info(attribute: attrs.Attribute[Any]) -> FieldInfo:
    """The metadata of a model field; every field must have some (it feeds the docs)."""
    try:
        info = attribute.metadata[_KEY]
    except KeyError:
        raise TypeError(f"field {attribute.name!r} has no doc() metadata") from None
    assert isinstance(info, FieldInfo)
    return info


def camel(name: str) -> str:
    """``ssh_key_ref`` → ``sshKeyRef``: the Kubernetes JSON spelling of a Python attribute."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def json_name(attribute: attrs.Attribute[Any]) -> str:
    return field_info(attribute).json_name or camel(attribute.name)


@attrs.frozen
class ObjectInfo:
    """Object-level schema data: cross-field CEL rules, ``minProperties``, and a description
    for where the object is not a field's value (array items)."""

    rules: tuple[Rule, ...] = ()
    min_properties: int | None = None
    description: str | None = None


_OBJECTS: dict[type, ObjectInfo] = {}


def object_rules(
    *rules: Rule, min_properties: int | None = None, description: str | None = None
) -> Callable[[T], T]:
    """Class decorator attaching object-level schema data (rules are inherited by subclasses)."""

    def register(cls: T) -> T:
        _OBJECTS[cls] = ObjectInfo(
            rules=tuple(rules), min_properties=min_properties, description=description
        )
        return cls

    return register


def object_info(cls: type) -> ObjectInfo:
    """Rules of ``cls`` and its bases (base first); other data from the nearest class."""
    rules: list[Rule] = []
    min_properties: int | None = None
    description: str | None = None
    for klass in reversed(cls.__mro__):
        info = _OBJECTS.get(klass)
        if info is not None:
            rules.extend(info.rules)
            min_properties = info.min_properties or min_properties
            description = info.description or description
    return ObjectInfo(rules=tuple(rules), min_properties=min_properties, description=description)
