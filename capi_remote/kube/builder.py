"""Wiring a controller into the manager: controller-runtime's builder, small.

``manager.controller(name, reconciler, for_=KIND).watches(OTHER, mapper).build()`` makes the
Controller, hands it to the manager and connects its watches.

Invariants:
- A built controller records on the manager's metrics registry (the one ``/metrics`` serves) and
  is run by the manager. ``Manager.add`` refuses a controller with other metrics, so forgetting
  them cannot silently drop a controller from ``/metrics``.
- The primary kind (``for_``) is always watched with ``own_object``: a controller wakes for the
  objects it reconciles without anyone remembering to ask.
- A builder builds one controller; its watches are registered then, each once.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from capi_remote.kube.client import Resource
from capi_remote.kube.controller import Controller
from capi_remote.kube.handler import Mapper, own_object
from capi_remote.kube.informer import Informer, Selector


class _Manager(Protocol):
    """What the builder needs of the Manager (which imports this module)."""

    def add(self, controller: Controller) -> Controller: ...

    def watch(
        self,
        controller: Controller,
        resource: Resource,
        mapper: Mapper,
        selector: Selector = ...,
        *,
        filtered: bool = ...,
    ) -> Informer: ...


@attrs.frozen
class _Watch:
    resource: Resource
    mapper: Mapper
    selector: Selector
    filtered: bool


class ControllerBuilder:
    """Collects a controller's watches; ``build`` hands it to the manager. Get one from
    ``Manager.controller``, which makes the controller on the manager's metrics."""

    def __init__(
        self,
        manager: _Manager,
        controller: Controller,
        for_: Resource,
        selector: Selector = Selector(),
        *,
        filtered: bool = True,
    ) -> None:
        self._manager = manager
        self._controller = controller
        self._watches = [_Watch(for_, own_object, selector, filtered)]
        self._built = False

    def watches(
        self,
        resource: Resource,
        mapper: Mapper,
        selector: Selector = Selector(),
        *,
        filtered: bool = True,
    ) -> ControllerBuilder:
        """Also reconcile what ``mapper`` names for each event of ``resource`` (see
        ``Manager.informer`` for ``selector`` and ``filtered``)."""
        self._check_not_built()
        self._watches.append(_Watch(resource, mapper, selector, filtered))
        return self

    def build(self) -> Controller:
        """The controller, added to the manager, its watches registered."""
        self._check_not_built()
        self._built = True
        controller = self._manager.add(self._controller)
        for watch in self._watches:
            self._manager.watch(
                controller, watch.resource, watch.mapper, watch.selector, filtered=watch.filtered
            )
        return controller

    def _check_not_built(self) -> None:
        if self._built:
            raise RuntimeError(f"controller {self._controller.name!r} was already built")
