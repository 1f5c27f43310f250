"""Clients for workload clusters, built from their ``<cluster>-kubeconfig`` Secrets.

Used to give a registered Node its providerID when nothing else does (no cloud provider runs on
remote hosts): Cluster API links a Node to its Machine only through that field.
"""

from __future__ import annotations

import base64
from typing import Any

import structlog
import yaml

from capi_remote import ApiError, KubeClient, TransportError
from capi_remote.resources import NODES
from reconcilers.secrets import ObjectSource

JSONDict = dict[str, Any]

_log = structlog.get_logger("capi_remote.workload")


class WorkloadClients:
    """One client per cluster, rebuilt when its kubeconfig Secret changes."""

    def __init__(self, secrets: ObjectSource) -> None:
        self._secrets = secrets
        self._clients: dict[tuple[str, str], tuple[str, KubeClient]] = {}

    async def get(self, namespace: str, cluster: str) -> KubeClient | None:
        secret = self._secrets.get(namespace, f"{cluster}-kubeconfig")
        if secret is None or "value" not in (secret.get("data") or {}):
            return None
        version = str(secret["metadata"].get("resourceVersion"))
        known = self._clients.get((namespace, cluster))
        if known is not None and known[0] == version:
            return known[1]
        if known is not None:
            await known[1].close()
        config = yaml.safe_load(base64.b64decode(secret["data"]["value"]))
        client = await KubeClient.from_kubeconfig_dict(config)
        self._clients[(namespace, cluster)] = (version, client)
        return client

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        self._clients.clear()


async def link_node(
    client: KubeClient, names: list[str], addresses: set[str], provider_id: str
) -> str:
    """Give the Node that is this host (by name, else by address) our providerID.

    Returns what happened: "linked", "already" (it has ours), "not-registered" (no such Node
    yet), "unreachable" (its API server cannot be asked, e.g. not up yet), or "conflict: <id>"
    when the Node carries another providerID (left alone).
    """
    try:
        return await _link_node(client, names, addresses, provider_id)
    except TransportError as error:
        _log.debug("workload cluster not reachable", error=str(error))
        return "unreachable"


async def _link_node(
    client: KubeClient, names: list[str], addresses: set[str], provider_id: str
) -> str:
    node = None
    for name in names:
        try:
            node = await client.get(NODES, None, name)
            break
        except ApiError as error:
            if not error.not_found:
                raise
    if node is None:
        for candidate in (await client.list(NODES)).get("items", []):
            node_addresses = {
                a.get("address") for a in candidate.get("status", {}).get("addresses", [])
            }
            if node_addresses & addresses:
                node = candidate
                break
    if node is None:
        return "not-registered"
    current = node.get("spec", {}).get("providerID")
    if current == provider_id:
        return "already"
    if current:
        return f"conflict: {current}"
    await client.patch(NODES, None, node["metadata"]["name"], {"spec": {"providerID": provider_id}})
    return "linked"
