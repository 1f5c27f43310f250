"""The RemoteMachine reconciler: the InfraMachine of the contract. Dispatches one reconcile:
deletion, or the waits for what the bootstrap needs (owner Machine, Cluster, not paused, cluster
infrastructure, a pooled host, bootstrap data), then the provisioning flow or, once provisioned,
the steady state.

Nothing is written to the object's metadata or spec before the first attempt starts: our
finalizer, the providerID and a claimed pooled host's spec go in one write just before it
(``ProvisionFlow``), so a machine that never started has no finalizer and its deletion is
immediate (``cleanup.py``). A pooled machine holds its host from the claim on
(``spec.claim`` of the PooledRemoteMachine) and is seen bound to it until that write.

Level-triggered: each reconcile reads the cache, works out the single next step, writes status
only if it changed, and returns. Every wait has a condition reason and is ended by a watch
(Machine, Cluster, Secrets, pool hosts), never by polling. A new machine's waits are written only
once it is ``QUIET_WAITS`` seconds old: Cluster API usually ends them within a second (owner
reference, bootstrap data), and a write each would cost the API server one per machine. While a
Machine already names it (``spec.infrastructureRef``), its owner reference is on its way (a
MachineSet creates the RemoteMachine, then the Machine, whose controller then adopts it: seconds
on a busy API server), so that wait stays unwritten for ``OWNER_PATIENCE``.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime
from typing import Any

import attrs
from structlog.typing import FilteringBoundLogger

from capi_remote import (
    Conflict,
    KubeClient,
    ReconcileContext,
    Request,
    Result,
    Store,
)
from capi_remote.api import RemoteMachineSpec, from_dict
from capi_remote.resources import CAPI_GROUP
from reconcilers import conditions as c
from reconcilers import pool as pools
from reconcilers.common import CLUSTER_NAME_LABEL, copy_status, is_paused, mark, owner_name
from reconcilers.remotemachine.backend import Backend, Machine
from reconcilers.remotemachine.cleanup import Deletion
from reconcilers.remotemachine.inherit import inherit_metadata
from reconcilers.remotemachine.machinestatus import FINALIZER, recorded
from reconcilers.remotemachine.nodelink import NodeLink
from reconcilers.remotemachine.provision import ProvisionFlow
from reconcilers.remotemachine.writer import Writer
from reconcilers.secrets import ObjectSource

JSONDict = dict[str, Any]
#: How long a new RemoteMachine may wait before its wait is written to status.
QUIET_WAITS = 5.0
#: How long a new RemoteMachine that a Machine names may wait for that Machine's owner reference.
OWNER_PATIENCE = 60.0
#: Machines by the RemoteMachine their ``spec.infrastructureRef`` names (``namespace/name``).
INFRA_REF_INDEX = "infrastructure-ref"


def infrastructure_ref(machine: JSONDict) -> list[str]:
    ref = machine.get("spec", {}).get("infrastructureRef") or {}
    if ref.get("kind") != "RemoteMachine" or not ref.get("name"):
        return []
    return [f"{machine['metadata'].get('namespace', '')}/{ref['name']}"]


@attrs.frozen
class Stores:
    machines: Store  # RemoteMachines
    capi_machines: Store
    clusters: Store
    pooled: Store


@attrs.frozen
class Backends:
    runner: Backend
    job: Backend

    def of(self, machine: Machine) -> Backend:
        return self.job if machine.spec.provision_job is not None else self.runner

    def other(self, machine: Machine) -> Backend:
        return self.runner if machine.spec.provision_job is not None else self.job


class RemoteMachineReconciler:
    def __init__(
        self,
        client: KubeClient,
        stores: Stores,
        secrets: ObjectSource,
        writer: Writer,
        backends: Backends,
        flow: ProvisionFlow,
        deletion: Deletion,
        node_link: NodeLink,
    ) -> None:
        self.client = client
        self.stores = stores
        self.secrets = secrets
        self.writer = writer
        self.backends = backends
        self.flow = flow
        self.deletion = deletion
        self.node_link = node_link
        self.claims = pools.PoolClaims(client, stores.pooled)

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a machine that is gone."""
        self.flow.memory.forget(uid)
        self.writer.forget(uid)

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        rm = self.stores.machines.get_by_name(request.namespace, request.name)
        if rm is None:
            return Result()
        rm = self.writer.view(rm)
        if rm["metadata"].get("deletionTimestamp"):
            cluster = rm["metadata"].get("labels", {}).get(CLUSTER_NAME_LABEL, "")
            self.node_link.forget(rm, cluster)
            return await self.deletion.run(ctx.log, rm, request)
        return await self._converge(ctx.log, rm, request)

    async def _converge(self, log: FilteringBoundLogger, rm: JSONDict, request: Request) -> Result:
        stores = self.stores
        status = copy_status(rm)
        owner = owner_name(rm, CAPI_GROUP, "Machine")
        machine = stores.capi_machines.get_by_name(request.namespace, owner) if owner else None
        if machine is None:
            named = stores.capi_machines.by_index(INFRA_REF_INDEX, request_key(request))
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_MACHINE_OWNER,
                "waiting for a Machine to own this RemoteMachine",
                OWNER_PATIENCE if named else QUIET_WAITS,
            )
        cluster_name = machine["metadata"].get("labels", {}).get(CLUSTER_NAME_LABEL) or (
            machine.get("spec", {}).get("clusterName")
        )
        cluster = stores.clusters.get_by_name(request.namespace, cluster_name or "")
        if cluster is None:
            return await self._wait(
                rm, status, c.WAITING_FOR_CLUSTER, f"waiting for Cluster {cluster_name!r}"
            )
        if is_paused(rm, cluster):
            mark(rm, status, c.PAUSED, True, c.PAUSED_REASON, "reconciliation is paused")
            await self.writer.status(rm, status)
            return Result()
        mark(rm, status, c.PAUSED, False, c.NOT_PAUSED)
        await inherit_metadata(self.client, rm, machine)
        spec = rm.get("spec", {})
        pooled = pools.held_host(stores.pooled, rm)
        if pooled is not None and spec.get("address") and pools.pin_edits(rm, pooled):
            return await self._restore_pins(rm, pooled)
        provisioned = bool((status.get("initialization") or {}).get("provisioned"))
        if provisioned and spec.get("providerID"):
            if FINALIZER not in rm["metadata"].get("finalizers", []):
                # Provisioned elsewhere (the reference provider, adopted): its deletion must
                # clean the host too.
                await self.writer.object(rm, recorded(copy.deepcopy(rm)))
                return Result()
            return await self.node_link.steady(log, rm, status, machine, cluster_name or "")
        infra = (cluster.get("status") or {}).get("initialization") or {}
        if not infra.get("infrastructureProvisioned"):
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_CLUSTER_INFRASTRUCTURE,
                f"waiting for Cluster {cluster_name} infrastructure",
            )
        read = rm
        if spec.get("pool") and not spec.get("address"):
            pooled = await self.claims.find_or_claim(rm, log)
            if pooled is None:
                return await self._wait(
                    rm,
                    status,
                    c.WAITING_FOR_POOL_MACHINE,
                    f"no free PooledRemoteMachine in pool {spec['pool']!r}; add one and this"
                    " machine proceeds",
                )
            rm = pools.host_spec_for(rm, pooled)  # as its first start records it
        data_name = (machine.get("spec", {}).get("bootstrap") or {}).get("dataSecretName")
        if not data_name:
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_BOOTSTRAP_DATA,
                "waiting for the bootstrap provider's data secret",
            )
        data_secret = self.secrets.get(request.namespace, data_name)
        if data_secret is None:
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_BOOTSTRAP_DATA,
                f"waiting for bootstrap data Secret {data_name}",
            )
        view = Machine(
            pools.with_host_pins(rm, pooled),
            from_dict(RemoteMachineSpec, rm["spec"]),
            machine,
            request,
            log,
            pooled,
            read if read is not rm else None,
        )
        await self.backends.other(view).retire(view.rm)  # e.g. a switch from provisionJob
        try:
            return await self.flow.step(self.backends.of(view), view, status, data_secret)
        except Conflict:
            if pooled is not None and read is not rm:  # maybe another replica bound it elsewhere
                await pools.unclaim_if_bound_elsewhere(self.client, read, pooled, log)
            raise

    async def _wait(
        self,
        rm: JSONDict,
        status: JSONDict,
        reason: str,
        message: str,
        patience: float = QUIET_WAITS,
    ) -> Result:
        quiet = quiet_waits_left(rm, time.time(), patience)
        if quiet > 0:  # the watch that ends the wait wakes it; else it looks again then
            return Result(requeue_after=quiet)
        mark(rm, status, c.READY, False, reason, message)
        status["phase"] = "Pending"
        await self.writer.status(rm, status)
        return Result()

    async def _restore_pins(self, rm: JSONDict, pooled: JSONDict) -> Result:
        """Give the machine its pooled host's pins again. Only the host's pins are ever used
        (:func:`reconcilers.pool.with_host_pins`); this keeps what users see true. A pin the
        machine merely lacks (the host was pinned since) is mirrored without an Event."""
        edits = pools.pin_edits(rm, pooled)
        own = rm["metadata"].get("annotations") or {}
        edited = sorted(pin for pin in edits if own.get(pin) is not None)
        await self.writer.object(rm, pools.with_host_pins(rm, pooled))
        if edited:
            name = pooled["metadata"]["name"]
            self.writer.event(
                rm,
                "Warning",
                c.HOST_PINS_RESTORED,
                f"{', '.join(edited)} differed from the pin of PooledRemoteMachine {name}"
                " (edited after the claim?): restored the host's pins, which alone verify it",
            )
        return Result()


def request_key(request: Request) -> str:
    return f"{request.namespace}/{request.name}"


def quiet_waits_left(rm: JSONDict, now: float, patience: float = QUIET_WAITS) -> float:
    """How much longer a wait of ``rm`` stays unwritten at ``now``: only a machine that has no
    Ready condition yet and is younger than ``patience`` (by the API server's clock, which has
    second resolution)."""
    if any(x.get("type") == c.READY for x in (rm.get("status") or {}).get("conditions") or []):
        return 0.0
    created = rm["metadata"].get("creationTimestamp")
    if not created:
        return 0.0
    try:
        age = now - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    if age < -1.0:  # this clock is behind the API server's: say everything at once
        return 0.0
    return max(0.0, patience - max(age, 0.0))
