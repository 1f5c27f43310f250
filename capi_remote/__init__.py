"""capi-remote: a Cluster API infrastructure provider for Linux hosts reachable over SSH.

The public surface for reconcilers (the layer above, loaded as plugins): the controller
framework's pieces re-exported here, plus the public subpackages ``capi_remote.api`` (models),
``capi_remote.bootstrap`` (plans), ``capi_remote.ssh`` (runner) and ``capi_remote.resources``.
``capi_remote.kube`` is the private core: an import-linter contract keeps reconcilers out of it.

The re-exports load on first use (PEP 562 ``__getattr__``): ``import capi_remote.ssh`` (the SSH
runner, a library of its own that knows nothing of Kubernetes) must not pay for the Kubernetes
stack (kubernetes_asyncio, aiohttp) it never uses. Type checkers read the imports under
``TYPE_CHECKING``; tests/unit/test_public_surface.py keeps them and ``_PUBLIC`` in step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capi_remote.app import Provider as Provider
    from capi_remote.app import ProviderOptions as ProviderOptions
    from capi_remote.kube.builder import ControllerBuilder as ControllerBuilder
    from capi_remote.kube.cache import Store as Store
    from capi_remote.kube.client import ApiError as ApiError
    from capi_remote.kube.client import KubeClient as KubeClient
    from capi_remote.kube.client import Resource as Resource
    from capi_remote.kube.client import TransportError as TransportError
    from capi_remote.kube.controller import Controller as Controller
    from capi_remote.kube.events import EventRecorder as EventRecorder
    from capi_remote.kube.handler import Mapper as Mapper
    from capi_remote.kube.handler import own_object as own_object
    from capi_remote.kube.handler import owner_of_kind as owner_of_kind
    from capi_remote.kube.handler import request_for as request_for
    from capi_remote.kube.informer import Event as Event
    from capi_remote.kube.informer import Informer as Informer
    from capi_remote.kube.informer import InformerOverflow as InformerOverflow
    from capi_remote.kube.informer import InformerSettings as InformerSettings
    from capi_remote.kube.informer import Selector as Selector
    from capi_remote.kube.kubeconfig import KubeconfigError as KubeconfigError
    from capi_remote.kube.manager import Manager as Manager
    from capi_remote.kube.reconcile import ReconcileContext as ReconcileContext
    from capi_remote.kube.reconcile import Reconciler as Reconciler
    from capi_remote.kube.reconcile import Request as Request
    from capi_remote.kube.reconcile import Result as Result
    from capi_remote.kube.reconcile import TerminalError as TerminalError
    from capi_remote.kube.status import Conflict as Conflict
    from capi_remote.kube.status import get_condition as get_condition
    from capi_remote.kube.status import patch_object as patch_object
    from capi_remote.kube.status import patch_status as patch_status
    from capi_remote.kube.status import set_condition as set_condition

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_PUBLIC = {
    "Provider": "capi_remote.app",
    "ProviderOptions": "capi_remote.app",
    "ControllerBuilder": "capi_remote.kube.builder",
    "Store": "capi_remote.kube.cache",
    "KubeconfigError": "capi_remote.kube.kubeconfig",
    "ApiError": "capi_remote.kube.client",
    "KubeClient": "capi_remote.kube.client",
    "Resource": "capi_remote.kube.client",
    "TransportError": "capi_remote.kube.client",
    "Controller": "capi_remote.kube.controller",
    "EventRecorder": "capi_remote.kube.events",
    "Mapper": "capi_remote.kube.handler",
    "own_object": "capi_remote.kube.handler",
    "owner_of_kind": "capi_remote.kube.handler",
    "request_for": "capi_remote.kube.handler",
    "Event": "capi_remote.kube.informer",
    "Informer": "capi_remote.kube.informer",
    "InformerOverflow": "capi_remote.kube.informer",
    "InformerSettings": "capi_remote.kube.informer",
    "Selector": "capi_remote.kube.informer",
    "Manager": "capi_remote.kube.manager",
    "ReconcileContext": "capi_remote.kube.reconcile",
    "Reconciler": "capi_remote.kube.reconcile",
    "Request": "capi_remote.kube.reconcile",
    "Result": "capi_remote.kube.reconcile",
    "TerminalError": "capi_remote.kube.reconcile",
    "Conflict": "capi_remote.kube.status",
    "get_condition": "capi_remote.kube.status",
    "patch_object": "capi_remote.kube.status",
    "patch_status": "capi_remote.kube.status",
    "set_condition": "capi_remote.kube.status",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    # Only public names import anything: ``from capi_remote import ssh`` asks here first, and
    # must find the subpackage without loading the Kubernetes stack.
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
