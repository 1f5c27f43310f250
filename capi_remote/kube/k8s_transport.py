"""kubernetes_asyncio's transport (ApiClient, Configuration, the config loaders) without its
generated API classes and 1,500 models: the controller never uses them (every call is
``call_api`` with ``_preload_content=False`` on plain dicts), yet ``import kubernetes_asyncio``
loads them all: 1,200 modules and about 60 MB of the controller's memory (docs/benchmarks.md).

How: before anything of kubernetes_asyncio is imported, its two package ``__init__`` modules that
pull the generated code in (``kubernetes_asyncio`` and ``kubernetes_asyncio.client``, plus
``client.models``, which ``api_client`` imports) are registered unexecuted; the transport's own
modules are imported from them directly.

Invariants:
- Nothing is lost: an unexecuted package runs its real ``__init__`` the first time someone asks
  it for a name it lacks that is not a submodule (``kubernetes_asyncio.client.CoreV1Api`` in a
  test), and then has all.
- If kubernetes_asyncio was imported before this module, it is used as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any


def _unexecuted(name: str) -> ModuleType:
    """The package ``name``, registered with its ``__init__`` not run until a name is missing."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)

    def lookup(attribute: str) -> Any:
        if attribute.startswith("__"):  # probes (copy, pickle, inspect) do not need the rest
            raise AttributeError(attribute)
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:  # a submodule
            return importlib.import_module(f"{name}.{attribute}")
        del module.__getattr__
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = lookup  # type: ignore[method-assign]
    sys.modules[name] = module
    return module


def _register() -> None:
    if "kubernetes_asyncio" in sys.modules:
        return
    root = _unexecuted("kubernetes_asyncio")
    client = _unexecuted("kubernetes_asyncio.client")
    client.models = _unexecuted("kubernetes_asyncio.client.models")  # type: ignore[attr-defined]
    root.client = client  # type: ignore[attr-defined]
    # What kubernetes_asyncio.config takes from the client package (``from ... import``).
    from kubernetes_asyncio.client.api_client import ApiClient
    from kubernetes_asyncio.client.configuration import Configuration

    client.ApiClient = ApiClient  # type: ignore[attr-defined]
    client.Configuration = Configuration  # type: ignore[attr-defined]


_register()

from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.config import (  # noqa: E402
    ConfigException,
    load_incluster_config,
    load_kube_config,
)

__all__ = [
    "ApiClient",
    "ConfigException",
    "Configuration",
    "load_incluster_config",
    "load_kube_config",
]
