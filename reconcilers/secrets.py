"""Reading Secrets and ConfigMaps without caching every one of them in the cluster.

- Bootstrap data Secrets carry the contract's type ``cluster.x-k8s.io/secret``: one informer
  filtered by that type serves them all. So does every other Secret of that type (CA keys, etcd
  and service-account keys of every cluster), so its store keeps only what the controller reads
  of them: the ``value`` and ``format`` keys (``SHARED_KEYS``), no annotations (kubectl's
  last-applied copy of the data lives there), and of those only values up to
  ``MAX_SHARED_VALUE``: a tenant may create any number of Secrets of that type, each up to
  1 MiB, and each was cached in full, referenced or not (tests/benchmarks/bench_bombs.py). A
  larger value is read, once something asks for it, from a watch of that Secret's name only.
  Its lists come in pages of ``SHARED_PAGE_SIZE``, each trimmed as it arrives, so a (re)list
  holds at most one such page in full.
- Any other object a RemoteMachine names (SSH key Secret, passwords, known_hosts), and any other
  key, gets a watch of its own, filtered by name, started on first use. Such objects are few and
  shared by many machines, so this costs a handful of watches, and one created late still wakes
  its machines (and, through :meth:`ObjectSource.add_handler`, re-probes the pooled hosts that
  name it).
- Per-name watches are released: when one is about to be opened and there are many, those whose
  name nothing references any more (``referenced``, e.g. the RemoteMachine index) are closed; and
  there are never more than ``max_watches``: past that, the least recently used is closed (its
  next use opens it again and waits for its list, as after a restart). Renaming ``sshKeyRef`` in
  a loop therefore cannot open unbounded watches.

Secret contents stay in memory only; nothing here logs them.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog

from capi_remote import Event, Informer, Manager, Resource, Selector

JSONDict = dict[str, Any]
BOOTSTRAP_SECRET_TYPE = "cluster.x-k8s.io/secret"
#: The data keys the shared store keeps of ``cluster.x-k8s.io/secret`` Secrets.
SHARED_KEYS = frozenset({"value", "format"})
#: Index name, on the RemoteMachine and PooledRemoteMachine stores, of ``namespace/name`` of every
#: Secret or ConfigMap a spec names (:func:`referenced_secrets`).
SECRET_REF_INDEX = "secret-refs"
#: The longest of those values (base64 characters) the shared store keeps: kubeadm's bootstrap
#: data is some 10-30 KiB.
MAX_SHARED_VALUE = 96 << 10
#: Set on the shared store's copy of a Secret whose value was too large to keep there.
_DROPPED = "capiRemoteDroppedKeys"
#: Secrets per page of the shared informer's lists: at most 1.5 MiB each (etcd's limit).
SHARED_PAGE_SIZE = 32
DEFAULT_MAX_WATCHES = 1024
# Unreferenced watches are looked for when the count reaches this, then twice the count left.
_FIRST_SWEEP = 64

_log = structlog.get_logger("capi_remote.secrets")


def referenced_secrets(rm: JSONDict) -> list[str]:
    """``namespace/name`` of every Secret or ConfigMap a RemoteMachine's spec names, so their
    watches wake it (a name shared by a Secret and a ConfigMap only costs a spare reconcile)."""
    spec = rm.get("spec", {})
    namespace = rm["metadata"].get("namespace", "")
    names = set()
    for holder in (spec, spec.get("bastion") or {}):
        key = holder.get("sshKeyRef") or {}
        for ref in (
            key,
            key.get("passphraseRef"),
            holder.get("passwordRef"),
            holder.get("sudoPasswordRef"),
        ):
            if ref and ref.get("name"):
                names.add(ref["name"])
        known = ((holder.get("hostKeyPolicy") or {}).get("knownHostsRef")) or {}
        if known.get("name"):  # a Secret or a ConfigMap: both wake the machine when they change
            names.add(known["name"])
    return [f"{namespace}/{n}" for n in sorted(names)]


def pooled_secrets(pooled: JSONDict) -> list[str]:
    """What a pooled host's spec names (its probes read those objects too)."""
    host = (pooled.get("spec") or {}).get("machine") or {}
    return referenced_secrets({"metadata": pooled["metadata"], "spec": host})


def shared_view(obj: JSONDict) -> JSONDict:
    """What the shared store keeps of a ``cluster.x-k8s.io/secret`` Secret."""
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    meta.pop("annotations", None)
    data = obj.get("data") or {}
    kept = {key: value for key, value in data.items() if key in SHARED_KEYS}
    obj["data"] = {key: value for key, value in kept.items() if len(value) <= MAX_SHARED_VALUE}
    if len(obj["data"]) < len(kept):
        obj[_DROPPED] = sorted(set(kept) - set(obj["data"]))
    obj.pop("stringData", None)
    return obj


class ObjectSource:
    """``get``/``value`` of named Secrets or ConfigMaps, backed by narrow watches.

    ``get`` may answer from the shared store, which holds only ``SHARED_KEYS`` of its objects
    (an object whose value was too large for it comes from its own watch); ``value`` of any
    other key always reads the object's own watch.
    """

    def __init__(
        self,
        manager: Manager,
        resource: Resource,
        on_change: Callable[[Event], None],
        shared_selector: Selector | None = None,
        *,
        referenced: Callable[[str, str], bool] | None = None,
        max_watches: int = DEFAULT_MAX_WATCHES,
    ) -> None:
        self._manager = manager
        self._resource = resource
        self._handlers = [on_change]
        self._referenced = referenced
        self._max_watches = max_watches
        self._sweep_at = _FIRST_SWEEP
        self._shared: Informer | None = None
        if shared_selector is not None:
            self._shared = manager.informer(
                resource,
                shared_selector,
                filtered=False,
                transform=shared_view,
                page_size=SHARED_PAGE_SIZE,
            )
            self._shared.add_handler(self._on_change)
        self._by_name: OrderedDict[tuple[str, str], Informer] = OrderedDict()

    def add_handler(self, handler: Callable[[Event], None]) -> None:
        """Also tell ``handler`` about every change of the objects this source watches."""
        self._handlers.append(handler)

    def _on_change(self, event: Event) -> None:
        for handler in self._handlers:
            handler(event)

    @property
    def watches(self) -> int:
        """How many per-name watches are open."""
        return len(self._by_name)

    def get(self, namespace: str, name: str) -> JSONDict | None:
        """The object if known; None while unknown (its watch reports it when it appears)."""
        found = self._shared_copy(namespace, name)
        if found is not None:
            return found
        return self._watch(namespace, name).store.get_by_name(namespace, name)

    def known(self, namespace: str, name: str) -> bool:
        """Whether :meth:`get` can be believed: the object is cached, or its watch has listed
        (then None means absent; before, it means not known yet, as after a restart)."""
        informer = self._by_name.get((namespace, name))
        if informer is not None:
            return informer.synced.is_set()
        return self._shared_copy(namespace, name) is not None

    def _shared_copy(self, namespace: str, name: str) -> JSONDict | None:
        """The shared store's copy if it is complete (no value dropped for size)."""
        if self._shared is None:
            return None
        found = self._shared.store.get_by_name(namespace, name)
        return None if found is None or _DROPPED in found else found

    def value(self, namespace: str, name: str, key: str) -> bytes | None:
        """One data key, decoded (Secrets are base64 in ``data``); None if missing."""
        if key in SHARED_KEYS:
            obj = self.get(namespace, name)
        else:
            obj = self._watch(namespace, name).store.get_by_name(namespace, name)
        if obj is None:
            return None
        data = obj.get("data") or {}
        if key not in data:
            return None
        if self._resource.kind == "Secret":
            return base64.b64decode(data[key])
        return str(data[key]).encode()

    def release(self, namespace: str, name: str) -> None:
        """Close the watch of this name, if any (e.g. when the last object naming it is gone)."""
        informer = self._by_name.pop((namespace, name), None)
        if informer is not None:
            self._manager.informers.discard(informer)

    def _watch(self, namespace: str, name: str) -> Informer:
        key = (namespace, name)
        informer = self._by_name.get(key)
        if informer is not None:
            self._by_name.move_to_end(key)
            return informer
        if len(self._by_name) >= self._sweep_at:
            self._sweep()
        while len(self._by_name) >= self._max_watches:
            (old_namespace, old_name), _ = next(iter(self._by_name.items()))
            _log.warning(
                "too many per-name watches, closing the least recently used",
                kind=self._resource.kind,
                limit=self._max_watches,
                namespace=old_namespace,
                name=old_name,
            )
            self.release(old_namespace, old_name)
        informer = self._manager.informer(
            self._resource,
            Selector(namespace=namespace, field_selector=f"metadata.name={name}"),
            filtered=False,
        )
        informer.add_handler(self._on_change)
        self._by_name[key] = informer
        return informer

    def _sweep(self) -> None:
        if self._referenced is not None:
            for namespace, name in list(self._by_name):
                if not self._referenced(namespace, name):
                    self.release(namespace, name)
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(self._by_name))
