"""The provider's business logic: one reconciler per kind, level-triggered.

``setup`` is the plugin entry point (``capi_remote.reconcilers`` entry-point group) that
``capi-remote run`` loads; it registers every controller and the conversion webhook.
"""

from __future__ import annotations

from capi_remote.api import review_response
from capi_remote.app import Provider


def setup(provider: Provider) -> None:
    from reconcilers import cluster

    if provider.webhooks is not None:
        provider.webhooks.register("/convert", review_response)
    cluster.setup(provider)
