"""A provisioned machine: conditions kept true, and its Node given our providerID.

The Node may register without a providerID (no cloud provider on remote hosts), so we set ours
on it. Nodes are in the workload cluster, which we do not watch: look again every little while
until Cluster API reports the Machine's nodeRef."""

from __future__ import annotations

from typing import Any

from structlog.typing import FilteringBoundLogger

from capi_remote import ApiError, Result
from reconcilers import conditions as c
from reconcilers.remotemachine.machinestatus import keep_true
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.writer import Writer
from reconcilers.workload import WorkloadClients, link_node

JSONDict = dict[str, Any]
NODE_LINK_INTERVAL = 20.0


class NodeLink:
    def __init__(self, writer: Writer, memory: MachineMemory, workloads: WorkloadClients) -> None:
        self.writer = writer
        self.memory = memory
        self.workloads = workloads

    async def steady(
        self,
        log: FilteringBoundLogger,
        rm: JSONDict,
        status: JSONDict,
        machine: JSONDict,
        cluster: str,
    ) -> Result:
        """Provisioned: keep the conditions true (never decaying to Unknown), and make sure the
        host's Node carries our providerID so Cluster API can link it to the Machine."""
        # The cache shows it provisioned: nothing of its provisioning needs remembering.
        self.memory.forget(rm["metadata"]["uid"])
        keep_true(rm, status, c.READY, c.PROVISIONED)
        keep_true(rm, status, c.BOOTSTRAP_SUCCEEDED, c.PROVISIONED)
        status["phase"] = "Provisioned"
        await self.writer.status(rm, status)
        if (machine.get("status") or {}).get("nodeRef"):
            return Result()
        client = await self.workloads.get(rm["metadata"]["namespace"], cluster)
        if client is None:
            return Result(requeue_after=NODE_LINK_INTERVAL)
        recorded = status.get("addresses") or []
        names = [a["address"] for a in recorded if a.get("type") == "Hostname"]
        names.append(machine["metadata"]["name"])
        addresses = {
            a["address"] for a in recorded if a.get("type") in ("InternalIP", "ExternalIP")
        }
        try:
            outcome = await link_node(client, names, addresses, rm["spec"]["providerID"])
        except (ApiError, OSError, TimeoutError) as error:
            log.debug("workload cluster not reachable yet", cluster=cluster, error=str(error))
            return Result(requeue_after=NODE_LINK_INTERVAL)
        if outcome == "linked":
            self.writer.event(rm, "Normal", "NodeLinked", "set the Node's providerID")
        elif outcome.startswith("conflict"):
            self.writer.event(
                rm,
                "Warning",
                "ProviderIDConflict",
                f"the Node of this host already has providerID {outcome.partition(': ')[2]}",
            )
        return Result(requeue_after=NODE_LINK_INTERVAL)
