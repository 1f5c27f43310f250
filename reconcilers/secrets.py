"""Reading Secrets and ConfigMaps without caching every one of them in the cluster.

- Bootstrap data Secrets carry the contract's type ``cluster.x-k8s.io/secret``: one informer
  filtered by that type serves them all.
- Any other object a RemoteMachine names (SSH key Secret, passwords, known_hosts) gets a watch
  of its own, filtered by name, started on first use. Such objects are few and shared by many
  machines, so this costs a handful of watches, and one created late still wakes its machines.

Secret contents stay in memory only; nothing here logs them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from capi_remote import Event, Informer, Manager, Resource, Selector

JSONDict = dict[str, Any]
BOOTSTRAP_SECRET_TYPE = "cluster.x-k8s.io/secret"


class ObjectSource:
    """``get``/``value`` of named Secrets or ConfigMaps, backed by narrow watches."""

    def __init__(
        self,
        manager: Manager,
        resource: Resource,
        on_change: Callable[[Event], None],
        shared_selector: Selector | None = None,
    ) -> None:
        self._manager = manager
        self._resource = resource
        self._on_change = on_change
        self._shared: Informer | None = None
        if shared_selector is not None:
            self._shared = manager.informer(resource, shared_selector, filtered=False)
            self._shared.add_handler(on_change)
        self._by_name: dict[tuple[str, str], Informer] = {}

    def get(self, namespace: str, name: str) -> JSONDict | None:
        """The object if known; None while unknown (its watch reports it when it appears)."""
        if self._shared is not None:
            found = self._shared.store.get_by_name(namespace, name)
            if found is not None:
                return found
        informer = self._by_name.get((namespace, name))
        if informer is None:
            informer = self._manager.informer(
                self._resource,
                Selector(namespace=namespace, field_selector=f"metadata.name={name}"),
                filtered=False,
            )
            informer.add_handler(self._on_change)
            self._by_name[(namespace, name)] = informer
        return informer.store.get_by_name(namespace, name)

    def known(self, namespace: str, name: str) -> bool:
        """Whether :meth:`get` can be believed: the object is cached, or its watch has listed
        (then None means absent; before, it means not known yet, as after a restart)."""
        if self._shared is not None and self._shared.store.get_by_name(namespace, name):
            return True
        informer = self._by_name.get((namespace, name))
        return informer is not None and informer.synced.is_set()

    def value(self, namespace: str, name: str, key: str) -> bytes | None:
        """One data key, decoded (Secrets are base64 in ``data``); None if missing."""
        obj = self.get(namespace, name)
        if obj is None:
            return None
        data = obj.get("data") or {}
        if key not in data:
            return None
        if self._resource.kind == "Secret":
            return base64.b64decode(data[key])
        return str(data[key]).encode()
