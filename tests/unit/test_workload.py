"""Linking a Node in a workload cluster whose API server cannot be asked yet."""

from __future__ import annotations

from typing import Any, cast

from capi_remote import KubeClient, Resource, TransportError
from reconcilers.workload import link_node


class Unreachable:
    """A workload cluster client whose API server is not up (yet)."""

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Any:
        raise TransportError("GET", f"/api/v1/nodes/{name}", "ClientConnectorError: refused")


async def test_an_unreachable_workload_cluster_is_an_outcome_not_an_error() -> None:
    client = cast(KubeClient, Unreachable())
    outcome = await link_node(client, ["node-1"], {"10.0.0.1"}, "remote://default/node-1")
    assert outcome == "unreachable"
