"""Watches: how informer events become reconcile Requests (controller-runtime's handler package).

A mapper looks at one event and names the objects whose reconcile it concerns. Reconcilers stay
level-triggered: a Request says "look at this object again", never what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from capi_remote.kube.informer import Event
from capi_remote.kube.reconcile import Request

Mapper = Callable[[Event], Iterable[Request]]


def request_for(obj: dict[str, object]) -> Request:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return Request(str(meta.get("namespace") or ""), str(meta["name"]))


def own_object(event: Event) -> Iterable[Request]:
    """The object itself (a controller's primary kind)."""
    return (request_for(event.obj),)


def owner_of_kind(group: str, kind: str, *, controller_only: bool = True) -> Mapper:
    """The owners of the given group/kind, e.g. a RemoteMachine's events wake its Machine."""

    def mapper(event: Event) -> Iterable[Request]:
        meta = event.obj["metadata"]
        namespace = str(meta.get("namespace") or "")
        for ref in meta.get("ownerReferences", ()):
            ref_group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            if ref.get("kind") != kind or ref_group != group:
                continue
            if controller_only and not ref.get("controller"):
                continue
            yield Request(namespace, str(ref["name"]))

    return mapper
