"""The store behind an informer: the latest known version of each object, with secondary indexes.

Invariants:
- Only the informer writes; reconcilers read. Objects handed out are the cached dicts themselves:
  treat them as read-only (copy before changing), as with client-go's shared cache.
- Every index is kept consistent with the objects on each write: an object is found under an index
  value exactly when the index function returns that value for its cached version.
- Walking an index value costs its size, not its past: a Python set never shrinks its table, so
  a value's set is copied once it has shrunk to a quarter of its largest size (a pool's free
  hosts, all claimed one by one, would otherwise be walked past a thousand empty slots).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

JSONDict = dict[str, Any]
IndexFunc = Callable[[JSONDict], Iterable[str]]


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects), the key used everywhere."""
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def index_by_owner_uid(obj: JSONDict) -> list[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences", ()) if "uid" in ref]


def index_by_label(label: str) -> IndexFunc:
    """Index objects by the value of one label (objects without it are not indexed)."""

    def index(obj: JSONDict) -> list[str]:
        value = obj["metadata"].get("labels", {}).get(label)
        return [value] if value is not None else []

    return index


def index_by_namespace(obj: JSONDict) -> list[str]:
    return [obj["metadata"].get("namespace", "")]


class Store:
    """Objects by key, plus named indexes (value → keys)."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._objects: dict[str, JSONDict] = {}
        self._indexers: dict[str, IndexFunc] = dict(indexers or {})
        self._indexes: dict[str, defaultdict[str, set[str]]] = {
            name: defaultdict(set) for name in self._indexers
        }
        #: The largest size of each index value's set since it was last copied.
        self._peaks: dict[str, dict[str, int]] = {name: {} for name in self._indexers}

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        """Add an index; existing objects are indexed right away."""
        if name in self._indexers:
            return
        self._indexers[name] = func
        self._indexes[name] = defaultdict(set)
        self._peaks[name] = {}
        for key, obj in self._objects.items():
            self._index(name, func, key, obj)

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: str) -> bool:
        return key in self._objects

    def get(self, key: str) -> JSONDict | None:
        return self._objects.get(key)

    def get_by_name(self, namespace: str | None, name: str) -> JSONDict | None:
        return self._objects.get(f"{namespace}/{name}" if namespace else name)

    def list_keys(self) -> list[str]:
        return list(self._objects)

    def values(self) -> list[JSONDict]:
        return list(self._objects.values())

    def by_index(self, index: str, value: str) -> list[JSONDict]:
        """Objects whose index function returned ``value``; KeyError for an unknown index."""
        keys = self._indexes[index].get(value, ())
        return [self._objects[key] for key in sorted(keys)]

    def iter_index(self, index: str, value: str) -> Iterator[JSONDict]:
        """The objects of :meth:`by_index`, unordered and one at a time, so taking the first few
        costs as much with a thousand as with ten. Consume it without awaiting in between: the
        informer may change the store meanwhile."""
        for key in self._indexes[index].get(value, ()):
            yield self._objects[key]

    # -- writes: the informer only -------------------------------------------------------------

    def upsert(self, obj: JSONDict) -> JSONDict | None:
        """Insert or replace; returns the previous version."""
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        for name, func in self._indexers.items():
            self._index(name, func, key, obj)
        return old

    def remove(self, key: str) -> JSONDict | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _index(self, name: str, func: IndexFunc, key: str, obj: JSONDict) -> None:
        peaks = self._peaks[name]
        for value in func(obj):
            keys = self._indexes[name][value]
            keys.add(key)
            if len(keys) > peaks.get(value, 0):
                peaks[value] = len(keys)

    def _unindex(self, key: str, obj: JSONDict) -> None:
        for name, func in self._indexers.items():
            index, peaks = self._indexes[name], self._peaks[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is None:
                    continue
                keys.discard(key)
                if not keys:
                    del index[value]
                    peaks.pop(value, None)
                elif 4 * len(keys) < peaks.get(value, 0):
                    index[value] = set(keys)
                    peaks[value] = len(keys)
