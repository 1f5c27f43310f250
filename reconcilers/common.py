"""Small helpers every reconciler uses: owners, pause, condition writing on JSON objects."""

from __future__ import annotations

import copy
from typing import Any

from capi_remote import Store
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


def copy_status(obj: JSONDict) -> JSONDict:
    return copy.deepcopy(obj.get("status") or {})
