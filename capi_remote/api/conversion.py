"""Conversion between v1beta1 and v1beta2, on plain dicts, for the conversion webhook.

Every field exists in both versions, some under another name or place:

=====================================  ===============================================
v1beta1                                v1beta2 (hub)
=====================================  ===============================================
spec.customCleanUpCommands             spec.cleanUpCommands
spec.machine.customCleanUpCommands     spec.machine.cleanUpCommands (PooledRemoteMachine)
status.ready                           status.initialization.provisioned
status.failureReason / failureMessage  status.deprecated.v1beta1.failureReason / ...Message
status.conditions (Cluster API v1)     status.deprecated.v1beta1.conditions
status.v1beta2.conditions              status.conditions (metav1)
=====================================  ===============================================

Conditions are carried, not translated: each version keeps the other shape in a dedicated field,
as Cluster API does for its own types, so a round trip in either direction is lossless and no
``cluster.x-k8s.io/conversion-data`` annotation is needed. Presence is preserved too (absent stays
absent, ``ready: false`` stays ``false``). The only inputs that do not survive are empty wrapper
objects (``status.v1beta2: {}``, ``status.deprecated: {}``), which the schemas reject anyway.

The templates are identical in both versions and use the ``None`` strategy; they are accepted here
too (only ``apiVersion`` changes) so a caller need not care.
"""

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

from capi_remote.api import v1beta1, v1beta2
from capi_remote.api.common import GROUP

_VERSIONS: Final = (v1beta1.API_VERSION, v1beta2.API_VERSION)
_V1BETA1_ONLY: Final = ("failureReason", "failureMessage", "conditions")


class ConversionError(ValueError):
    """The object or request cannot be converted; the message is returned to the apiserver."""


def _api_version(version: str) -> str:
    full = version if "/" in version else f"{GROUP}/{version}"
    if full not in _VERSIONS:
        raise ConversionError(f"unsupported apiVersion {version!r}; supported: {_VERSIONS}")
    return full


def _child(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    return value if isinstance(value, dict) else None


def _rename(obj: dict[str, Any] | None, old: str, new: str) -> None:
    if obj is not None and old in obj:
        obj[new] = obj.pop(old)


def _status_to_hub(status: dict[str, Any]) -> None:
    if "ready" in status:
        status["initialization"] = {"provisioned": status.pop("ready")}
    deprecated = {k: status.pop(k) for k in _V1BETA1_ONLY if k in status}
    if deprecated:
        status["deprecated"] = {"v1beta1": deprecated}
    hub = status.pop("v1beta2", None)
    if isinstance(hub, dict) and "conditions" in hub:
        status["conditions"] = hub["conditions"]


def _status_from_hub(status: dict[str, Any]) -> None:
    initialization = status.pop("initialization", None)
    if isinstance(initialization, dict) and "provisioned" in initialization:
        status["ready"] = initialization["provisioned"]
    has_conditions = "conditions" in status
    conditions = status.pop("conditions", None)
    deprecated = status.pop("deprecated", None)
    old = deprecated.get("v1beta1") if isinstance(deprecated, dict) else None
    if isinstance(old, dict):
        status.update({k: old[k] for k in _V1BETA1_ONLY if k in old})
    if has_conditions:
        status["v1beta2"] = {"conditions": conditions}


def _machine(obj: dict[str, Any], to_hub: bool) -> None:
    names = ("customCleanUpCommands", "cleanUpCommands")
    old, new = names if to_hub else names[::-1]
    _rename(_child(obj, "spec"), old, new)
    _status(obj, to_hub)


def _pooled(obj: dict[str, Any], to_hub: bool) -> None:
    names = ("customCleanUpCommands", "cleanUpCommands")
    old, new = names if to_hub else names[::-1]
    spec = _child(obj, "spec")
    _rename(_child(spec, "machine") if spec is not None else None, old, new)


def _status(obj: dict[str, Any], to_hub: bool) -> None:
    status = _child(obj, "status")
    if status is not None:
        (_status_to_hub if to_hub else _status_from_hub)(status)


def _template(obj: dict[str, Any], to_hub: bool) -> None:
    """Both versions of the templates have the same shape."""


_CONVERTERS: Final[Mapping[str, Callable[[dict[str, Any], bool], None]]] = {
    "RemoteMachine": _machine,
    "PooledRemoteMachine": _pooled,
    "RemoteCluster": _status,
    "RemoteMachineTemplate": _template,
    "RemoteClusterTemplate": _template,
}


def convert(obj: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Convert one object to ``to_version`` (``v1beta2`` or ``<group>/v1beta2``); returns a copy."""
    target = _api_version(to_version)
    source = _api_version(str(obj.get("apiVersion", "")))
    kind = obj.get("kind")
    converter = _CONVERTERS.get(kind) if isinstance(kind, str) else None
    if converter is None:
        raise ConversionError(f"unsupported kind {kind!r}")
    out = copy.deepcopy(dict(obj))
    out["apiVersion"] = target
    if source != target:
        converter(out, target == v1beta2.API_VERSION)
    return out


def review_response(review: Mapping[str, Any]) -> dict[str, Any]:
    """Answer an ``apiextensions.k8s.io/v1`` ConversionReview request.

    A bad object fails the whole review with a message (the apiserver requires all or nothing); a
    review without a request uid cannot be answered at all and raises :class:`ConversionError`.
    """
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ConversionError("ConversionReview has no request.uid")
    response: dict[str, Any] = {"uid": request["uid"]}
    try:
        desired = request.get("desiredAPIVersion")
        if not isinstance(desired, str):
            raise ConversionError("ConversionReview has no request.desiredAPIVersion")
        _api_version(desired)
        objects = request.get("objects") or []
        if not isinstance(objects, list) or not all(isinstance(o, Mapping) for o in objects):
            raise ConversionError("request.objects must be a list of objects")
        response["convertedObjects"] = [convert(o, desired) for o in objects]
        response["result"] = {"status": "Success"}
    except ConversionError as err:
        response["convertedObjects"] = []
        response["result"] = {"status": "Failure", "message": str(err)}
    return {
        "apiVersion": review.get("apiVersion", "apiextensions.k8s.io/v1"),
        "kind": "ConversionReview",
        "response": response,
    }
