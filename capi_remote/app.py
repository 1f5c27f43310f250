"""Wiring of the controller process: client, manager, webhook server, and the reconciler plugins.

Reconcilers are plugins found through the ``capi_remote.reconcilers`` entry-point group (this
package's own ``reconcilers`` registers there), the way kopf loads operator modules: the framework
never imports the business logic, so the layering stays one-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from pathlib import Path

import attrs
import structlog

from capi_remote.kube.client import KubeClient
from capi_remote.kube.leader import LeaderElectionSettings
from capi_remote.kube.manager import Manager, ManagerSettings
from capi_remote.kube.webhook import WebhookServer, WebhookSettings

PLUGIN_GROUP = "capi_remote.reconcilers"

_log = structlog.get_logger("capi_remote.app")


@attrs.frozen
class ProviderOptions:
    """Everything ``capi-remote run`` was told, validated by the CLI."""

    kubeconfig: str | None = None
    namespace: str | None = None
    watch_filter: str | None = None
    leader_election: bool = False
    leader_election_namespace: str = "default"
    leader_election_id: str = "capi-remote"
    identity: str = "capi-remote"
    metrics_address: str | None = "127.0.0.1:8080"
    metrics_secure: bool = True
    metrics_cert_dir: Path | None = None
    health_address: str | None = "0.0.0.0:9440"
    machine_workers: int = 32
    pool_workers: int = 4
    ssh_workers: int = 256
    # Cluster admin's opt-in: send password/sudoPassword Secrets to hosts whose key is unverified.
    secrets_to_unverified_hosts: bool = False
    webhook_port: int | None = 9443
    webhook_cert_dir: Path = Path("/tmp/k8s-webhook-server/serving-certs")


@attrs.define
class Provider:
    """What a reconciler plugin's ``setup(provider)`` gets: the manager and shared services.

    ``on_close`` callbacks (plain or async) run after the manager stopped (e.g. shutting down
    the SSH pool, closing workload cluster clients).
    """

    manager: Manager
    client: KubeClient
    options: ProviderOptions
    webhooks: WebhookServer | None
    on_close: list[Callable[[], Awaitable[None] | None]] = attrs.field(factory=list)


Plugin = Callable[[Provider], None]


def load_plugins() -> list[Plugin]:
    plugins: list[Plugin] = []
    for entry in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugins.append(entry.load())
    if not plugins:
        raise RuntimeError(f"no reconcilers registered under the {PLUGIN_GROUP!r} entry points")
    return plugins


def build_provider(client: KubeClient, options: ProviderOptions) -> Provider:
    election = None
    if options.leader_election:
        election = LeaderElectionSettings(
            namespace=options.leader_election_namespace,
            name=options.leader_election_id,
            identity=options.identity,
        )
    manager = Manager(
        client,
        ManagerSettings(
            health_address=options.health_address,
            metrics_address=options.metrics_address,
            metrics_secure=options.metrics_secure,
            metrics_cert_dir=options.metrics_cert_dir,
            leader_election=election,
            namespace=options.namespace,
            watch_filter=options.watch_filter,
        ),
    )
    webhooks = None
    if options.webhook_port is not None:
        webhooks = WebhookServer(
            WebhookSettings(cert_dir=options.webhook_cert_dir, port=options.webhook_port)
        )
    provider = Provider(manager, client, options, webhooks)
    for setup in load_plugins():
        setup(provider)
    return provider


@contextlib.asynccontextmanager
async def _closing(provider: Provider) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for close in reversed(provider.on_close):
            closing = close()
            if closing is not None:
                await closing


async def run_provider(options: ProviderOptions) -> None:
    """Run until cancelled; shuts down gracefully on cancel."""
    client = await KubeClient.from_kubeconfig(options.kubeconfig)
    try:
        provider = build_provider(client, options)
        async with _closing(provider):
            if provider.webhooks is not None:
                await provider.webhooks.start()
            try:
                await provider.manager.run()
            finally:
                if provider.webhooks is not None:
                    await provider.webhooks.stop()
    finally:
        await client.close()
        _log.info("stopped")
