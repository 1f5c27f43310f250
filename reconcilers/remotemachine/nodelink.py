"""A provisioned machine: conditions kept true, and its Node given our providerID.

The Node may register without a providerID (no cloud provider on remote hosts), so we set ours
on it. The workload cluster's Nodes come from a watch that runs while machines wait for theirs
(:mod:`reconcilers.workloadnodes`): a Node that registers wakes its machine, so the machine looks
again on its own only every ``NODE_LINK_INTERVAL`` (a safety net, and what keeps it waiting), and
stops waiting once Cluster API reports the Machine's nodeRef."""

from __future__ import annotations

from typing import Any

from structlog.typing import FilteringBoundLogger

from capi_remote import ApiError, Request, Result, TransportError, request_for
from reconcilers import conditions as c
from reconcilers.remotemachine.machinestatus import keep_true
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.writer import Writer
from reconcilers.workload import InvalidWorkloadKubeconfig, WorkloadClients, set_provider_id
from reconcilers.workloadnodes import WorkloadNodes

JSONDict = dict[str, Any]
#: Well inside ``NodeWatchSettings.wait_ttl``, which a look renews.
NODE_LINK_INTERVAL = 60.0


class NodeLink:
    def __init__(
        self,
        writer: Writer,
        memory: MachineMemory,
        workloads: WorkloadClients,
        nodes: WorkloadNodes,
    ) -> None:
        self.writer = writer
        self.memory = memory
        self.workloads = workloads
        self.nodes = nodes

    def forget(self, rm: JSONDict, cluster: str) -> None:
        """The machine no longer waits for its Node (linked, or being deleted)."""
        self.nodes.release((rm["metadata"]["namespace"], cluster), request_for(rm))

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
            self.forget(rm, cluster)
            return Result()
        try:
            client = await self.workloads.get(rm["metadata"]["namespace"], cluster)
        except InvalidWorkloadKubeconfig as refused:
            # The tenant-written kubeconfig asks for something the controller never does (exec,
            # files, proxies...): say so (aggregated by the recorder) and look again later; the
            # machine itself stays provisioned.
            log.info("workload kubeconfig refused", reason=refused.reason, message=str(refused))
            self.writer.event(rm, "Warning", refused.reason, str(refused))
            return Result(requeue_after=NODE_LINK_INTERVAL)
        if client is None:
            return Result(requeue_after=NODE_LINK_INTERVAL)
        recorded = status.get("addresses") or []
        names = [a["address"] for a in recorded if a.get("type") == "Hostname"]
        names.append(machine["metadata"]["name"])
        addresses = {
            a["address"] for a in recorded if a.get("type") in ("InternalIP", "ExternalIP")
        }
        request: Request = request_for(rm)
        key = (rm["metadata"]["namespace"], cluster)
        found = self.nodes.lookup(key, client, request, names, addresses)
        if found.failure is not None:
            self.writer.event(rm, "Warning", "WorkloadNodesUnwatched", found.failure)
            return Result(requeue_after=NODE_LINK_INTERVAL)
        if found.node is None:  # listing, or not registered yet: its watch wakes us
            return Result(requeue_after=NODE_LINK_INTERVAL)
        try:
            outcome = await set_provider_id(client, found.node, rm["spec"]["providerID"])
        except (ApiError, TransportError, ValueError) as error:
            log.debug("workload cluster not reachable", cluster=cluster, error=str(error))
            return Result(requeue_after=NODE_LINK_INTERVAL)
        if outcome == "linked":
            self.nodes.linked(key, found.node["metadata"]["name"], rm["spec"]["providerID"])
            self.writer.event(rm, "Normal", "NodeLinked", "set the Node's providerID")
        elif outcome.startswith("conflict"):
            self.writer.event(
                rm,
                "Warning",
                "ProviderIDConflict",
                f"the Node of this host already has providerID {outcome.partition(': ')[2]}",
            )
        return Result(requeue_after=NODE_LINK_INTERVAL)
