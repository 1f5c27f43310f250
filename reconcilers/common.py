"""Small helpers every reconciler uses: owners, pause, condition writing on JSON objects."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from capi_remote import Store, set_condition
from reconcilers import conditions as c

JSONDict = dict[str, Any]
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
MANAGED_BY_ANNOTATION = "cluster.x-k8s.io/managed-by"


def owner_name(obj: JSONDict, group: str, kind: str) -> str | None:
    """Name of the owner of the given group/kind (CAPI owners are in the same namespace)."""
    for ref in obj["metadata"].get("ownerReferences", ()):
        if ref.get("kind") == kind and str(ref.get("apiVersion", "")).startswith(f"{group}/"):
            return str(ref["name"])
    return None


def cached(store: Store, namespace: str | None, name: str | None) -> JSONDict | None:
    return store.get_by_name(namespace, name) if name else None


def is_paused(obj: JSONDict, cluster: JSONDict | None) -> bool:
    if PAUSED_ANNOTATION in obj["metadata"].get("annotations", {}):
        return True
    return bool(cluster and cluster.get("spec", {}).get("paused"))


def paused_condition(paused: bool) -> tuple[str, bool, str, str]:
    if paused:
        return (c.PAUSED, True, c.PAUSED_REASON, "reconciliation is paused")
    return (c.PAUSED, False, c.NOT_PAUSED, "")


def mark(
    obj: JSONDict, status: JSONDict, type_: str, ok: bool, reason: str, message: str = ""
) -> None:
    """Set one condition in ``status`` for ``obj``'s current generation."""
    status["conditions"] = set_condition(
        status.get("conditions", []),
        type_,
        ok,
        reason,
        message,
        observed_generation=obj["metadata"].get("generation"),
    )


def unix_time(stamp: str | None) -> float | None:
    """A Kubernetes timestamp (``2026-01-02T03:04:05Z``) as Unix time; None if absent or bad."""
    if not stamp:
        return None
    try:
        parsed = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def copy_status(obj: JSONDict) -> JSONDict:
    return copy.deepcopy(obj.get("status") or {})


class OwnWrites:
    """Read-your-writes over an informer cache.

    After a write the cache still shows the old object until the watch delivers the new one; a
    reconcile in that window would send its next write against the old resourceVersion and get
    a 409. So, per object UID, remember the resourceVersions our writes replaced and the object
    the last write returned: while the cache shows a replaced version, use that object instead.
    Sound because a write that succeeded was based on the version it replaced: nothing else
    came in between.
    """

    def __init__(self) -> None:
        self._replaced: dict[str, set[str]] = {}
        self._latest: dict[str, JSONDict] = {}

    def note(self, before: JSONDict, after: JSONDict | None) -> JSONDict:
        """Record a write of ``before`` that returned ``after`` (None: nothing was written)."""
        if after is None:
            return before
        uid = before["metadata"]["uid"]
        self._replaced.setdefault(uid, set()).add(before["metadata"]["resourceVersion"])
        self._latest[uid] = after
        return after

    def view(self, cached: JSONDict) -> JSONDict:
        """The freshest known state of ``cached``: our last write's result while the cache lags."""
        uid = cached["metadata"]["uid"]
        if cached["metadata"].get("resourceVersion") in self._replaced.get(uid, ()):
            return self._latest[uid]
        self.forget(uid)  # the cache caught up (or moved past our write)
        return cached

    def forget(self, uid: str) -> None:
        self._replaced.pop(uid, None)
        self._latest.pop(uid, None)
