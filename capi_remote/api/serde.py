"""Dict ⇄ model conversion: camelCase JSON names, unset optional fields omitted.

A field whose default is ``None`` is omitted when ``None``, so absent stays absent; a field with a
real default (``port: 22``) is always written, as the apiserver would have defaulted it anyway. With
that, an object read from the apiserver round-trips exactly through ``from_dict``/``to_dict``.

Primitives are checked, not coerced (cattrs would turn ``"false"`` into ``True``). Unknown keys are
ignored by default, as Kubernetes clients do (a newer CRD may carry fields this code predates);
``strict=True`` rejects them, which the tests use to prove that every field is modelled.
"""

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from capi_remote.api.fields import json_name

T = TypeVar("T")


def _checked(kind: type) -> Any:
    def structure(value: Any, _: type) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}: {value!r}")
        return value

    return structure


def _is_json(tp: Any) -> bool:
    return bool(tp == Mapping[str, Any])


def _overrides(cls: type) -> dict[str, Any]:
    return {
        a.name: override(rename=json_name(a), omit_if_default=a.default is None)
        for a in attrs.fields(cls)
    }


def _make_converter(*, strict: bool) -> cattrs.Converter:
    converter = cattrs.Converter(unstruct_collection_overrides={tuple: list})
    for kind in (str, int, bool):
        converter.register_structure_hook(kind, _checked(kind))
    # Free-form JSON (a Job template, managedFields) is copied so models never alias caller data.
    converter.register_structure_hook_func(_is_json, lambda value, _: copy.deepcopy(value))
    converter.register_unstructure_hook_func(_is_json, copy.deepcopy)
    converter.register_structure_hook_factory(
        attrs.has,
        lambda cls: make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=strict, **_overrides(cls)
        ),
    )
    converter.register_unstructure_hook_factory(
        attrs.has, lambda cls: make_dict_unstructure_fn(cls, converter, **_overrides(cls))
    )
    return converter


_LENIENT = _make_converter(strict=False)
_STRICT = _make_converter(strict=True)


def from_dict(cls: type[T], data: Mapping[str, Any], *, strict: bool = False) -> T:
    """Build a model from its JSON form; raises ``cattrs`` validation errors on bad input."""
    return (_STRICT if strict else _LENIENT).structure(data, cls)


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON form of a model (camelCase keys, ``None`` fields omitted)."""
    out = _LENIENT.unstructure(obj)
    assert isinstance(out, dict)
    return out
