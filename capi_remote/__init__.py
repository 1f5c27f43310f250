"""capi-remote: a Cluster API infrastructure provider for Linux hosts reachable over SSH.

The public surface for reconcilers (the layer above, loaded as plugins): the controller
framework's pieces re-exported here, plus the public subpackages ``capi_remote.api`` (models),
``capi_remote.bootstrap`` (plans), ``capi_remote.ssh`` (runner) and ``capi_remote.resources``.
``capi_remote.kube`` is the private core: an import-linter contract keeps reconcilers out of it.
"""

from capi_remote.app import Provider, ProviderOptions
from capi_remote.kube.builder import ControllerBuilder
from capi_remote.kube.cache import Store
from capi_remote.kube.client import ApiError, KubeClient, Resource
from capi_remote.kube.controller import Controller
from capi_remote.kube.events import EventRecorder
from capi_remote.kube.handler import Mapper, own_object, owner_of_kind, request_for
from capi_remote.kube.informer import Event, Informer, Selector
from capi_remote.kube.kubeconfig import KubeconfigError
from capi_remote.kube.manager import Manager
from capi_remote.kube.reconcile import ReconcileContext, Reconciler, Request, Result, TerminalError
from capi_remote.kube.status import (
    Conflict,
    get_condition,
    patch_object,
    patch_status,
    set_condition,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "Conflict",
    "Controller",
    "ControllerBuilder",
    "Event",
    "EventRecorder",
    "Informer",
    "KubeClient",
    "KubeconfigError",
    "Manager",
    "Mapper",
    "Provider",
    "ProviderOptions",
    "ReconcileContext",
    "Reconciler",
    "Request",
    "Resource",
    "Result",
    "Selector",
    "Store",
    "TerminalError",
    "get_condition",
    "own_object",
    "owner_of_kind",
    "patch_object",
    "patch_status",
    "request_for",
    "set_condition",
]
