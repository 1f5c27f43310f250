"""Status writes that happen only when something changed, guarded by resourceVersion.

Invariants:
- ``patch_status`` sends nothing when the desired status equals the cached one, so a steady
  state produces no writes (CAPI's ResourceVersionStable check).
- Every write carries the resourceVersion the decision was based on; a 409 Conflict surfaces as
  :class:`Conflict` and the reconcile is retried against the newer object; a 404 as
  :class:`ObjectGone` (the object was deleted since).
- A condition's ``lastTransitionTime`` moves only when its ``status`` changes;
  ``observedGeneration`` says which spec the condition describes.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from capi_remote.kube.client import ApiError, KubeClient, Resource

JSONDict = dict[str, Any]


class Conflict(Exception):
    """The object changed since it was read; reconcile again from the fresh version."""


class ObjectGone(ApiError):
    """A write found no object (404): deleted since it was read. Still an ApiError (a caller
    that expects the 404 goes on checking ``not_found``); the controller ends a reconcile whose
    own object this is quietly, without a retry (its deletion's event is on the way)."""

    def __init__(self, error: ApiError, resource: Resource, namespace: str | None, name: str):
        super().__init__(error.status, error.reason, error.message)
        self.resource, self.namespace, self.name = resource, namespace, name


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[JSONDict],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[JSONDict]:
    """Return a new conditions list with ``type_`` set (metav1.Condition shape)."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    result = [dict(c) for c in conditions]
    existing = next((c for c in result if c.get("type") == type_), None)
    condition: JSONDict = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now or now_rfc3339(),
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    if existing is None:
        result.append(condition)
        return result
    if existing.get("status") == status_text and existing.get("lastTransitionTime"):
        condition["lastTransitionTime"] = existing["lastTransitionTime"]
    existing.clear()
    existing.update(condition)
    return result


def get_condition(obj: JSONDict, type_: str) -> JSONDict | None:
    for condition in obj.get("status", {}).get("conditions", ()):
        if condition.get("type") == type_:
            return dict(condition)
    return None


def _merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning ``old`` into ``new`` (lists are replaced whole)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: JSONDict = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = _merge_patch(old[key], value)
    return patch


async def patch_status(
    client: KubeClient, resource: Resource, obj: JSONDict, status: JSONDict
) -> JSONDict | None:
    """Write ``status`` if it differs from ``obj['status']``; returns the updated object or None
    when nothing needed writing. Raises :class:`Conflict` if ``obj`` is stale."""
    current = obj.get("status", {})
    if current == status:
        return None
    meta = obj["metadata"]
    patch = {
        "metadata": {"resourceVersion": meta["resourceVersion"]},
        "status": _merge_patch(current, copy.deepcopy(status)),
    }
    try:
        return await client.patch(
            resource, meta.get("namespace"), meta["name"], patch, subresource="status"
        )
    except ApiError as error:
        _raise_typed(error, resource, meta)
        raise


async def patch_object(
    client: KubeClient, resource: Resource, obj: JSONDict, desired: JSONDict
) -> JSONDict | None:
    """Like :func:`patch_status` for the main resource (metadata/spec): only changed fields are
    sent, with the resourceVersion precondition."""
    current = {k: v for k, v in obj.items() if k not in ("status", "apiVersion", "kind")}
    wanted = {k: v for k, v in desired.items() if k not in ("status", "apiVersion", "kind")}
    patch = _merge_patch(current, wanted)
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
    meta = obj["metadata"]
    try:
        return await client.patch(resource, meta.get("namespace"), meta["name"], patch)
    except ApiError as error:
        _raise_typed(error, resource, meta)
        raise


def _raise_typed(error: ApiError, resource: Resource, meta: JSONDict) -> None:
    """A write's 409 as :class:`Conflict`, its 404 as :class:`ObjectGone`; else return."""
    if error.conflict:
        raise Conflict(f"{resource.kind} {meta['name']} changed; retrying") from error
    if error.not_found:
        raise ObjectGone(error, resource, meta.get("namespace"), meta["name"]) from error
