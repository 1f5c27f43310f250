"""Clients for workload clusters, built from their ``<cluster>-kubeconfig`` Secrets.

Used to give a registered Node its providerID when nothing else does (no cloud provider runs on
remote hosts): Cluster API links a Node to its Machine only through that field. The Nodes are
read from a watch (:mod:`reconcilers.workloadnodes`).
"""

from __future__ import annotations

import base64
from typing import Any

from capi_remote import KubeClient, KubeconfigError
from capi_remote.resources import NODES
from reconcilers.secrets import ObjectSource

JSONDict = dict[str, Any]


class WorkloadClients:
    """One client per cluster, rebuilt when its kubeconfig Secret changes.

    The Secret is tenant-written: it is loaded by ``KubeClient.from_untrusted_kubeconfig`` (inline
    server, CA, client certificate and token only). A refused kubeconfig raises
    :class:`InvalidWorkloadKubeconfig` until the Secret changes, without being parsed again.
    """

    def __init__(self, secrets: ObjectSource) -> None:
        self._secrets = secrets
        self._clients: dict[tuple[str, str], tuple[str, KubeClient | KubeconfigError]] = {}

    async def get(self, namespace: str, cluster: str) -> KubeClient | None:
        """The cluster's client; None while its Secret (or its ``value``) does not exist."""
        name = f"{cluster}-kubeconfig"
        secret = self._secrets.get(namespace, name)
        if secret is None or "value" not in (secret.get("data") or {}):
            return None
        version = str(secret["metadata"].get("resourceVersion"))
        known = self._clients.get((namespace, cluster))
        if known is None or known[0] != version:
            if known is not None and isinstance(known[1], KubeClient):
                await known[1].close()
            known = (version, _load(secret["data"]["value"]))
            self._clients[(namespace, cluster)] = known
        if isinstance(known[1], KubeconfigError):
            raise InvalidWorkloadKubeconfig(f"Secret {namespace}/{name}: {known[1].message}")
        return known[1]

    async def close(self) -> None:
        for _, client in self._clients.values():
            if isinstance(client, KubeClient):
                await client.close()
        self._clients.clear()


class InvalidWorkloadKubeconfig(Exception):
    """The ``<cluster>-kubeconfig`` Secret holds a kubeconfig the controller refuses to use.

    ``str()`` names the Secret and the refused key (never a value): fit for a condition message.
    """

    reason = "InvalidWorkloadKubeconfig"


def _load(encoded: str) -> KubeClient | KubeconfigError:
    # The API server bounds a Secret (about 1.5 MiB); the loader bounds the decoded document.
    try:
        return KubeClient.from_untrusted_kubeconfig(base64.b64decode(encoded))
    except KubeconfigError as error:
        return error
    except ValueError:  # undecodable base64
        return KubeconfigError("the Secret's 'value' is not valid base64")


async def set_provider_id(client: KubeClient, node: JSONDict, provider_id: str) -> str:
    """Give the host's ``node`` our providerID, unless it has one.

    Returns what happened: "linked", "already" (it has ours), or "conflict: <id>" when the Node
    carries another providerID (left alone).
    """
    current = node.get("spec", {}).get("providerID")
    if current == provider_id:
        return "already"
    if current:
        return f"conflict: {current}"
    await client.patch(NODES, None, node["metadata"]["name"], {"spec": {"providerID": provider_id}})
    return "linked"
