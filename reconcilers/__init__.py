"""The provider's business logic: one reconciler per kind, level-triggered.

``setup`` is the plugin entry point (``capi_remote.reconcilers`` entry-point group) that
``capi-remote run`` loads; it registers every controller, the shared SSH runner and the
conversion webhook.
"""

from __future__ import annotations

from capi_remote import Provider
from capi_remote.api import review_response
from capi_remote.ssh import Runner, SSHSettings


def setup(provider: Provider) -> None:
    from reconcilers import cluster, pool, remotemachine, template

    if provider.webhooks is not None:
        provider.webhooks.register("/convert", review_response)
    runner = Runner(
        SSHSettings(max_workers=provider.options.ssh_workers),
        identity=provider.options.identity,
    )
    provider.on_close.append(runner.detach)
    access = remotemachine.setup(provider, runner)
    pool.setup(provider, pool.probe_with(access), (access.secrets, access.configmaps))
    template.setup(provider)
    cluster.setup(provider)
