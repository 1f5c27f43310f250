"""What wakes the RemoteMachine controller, and its wiring: indexers on the shared stores,
mappers from related objects (Machine, Cluster, Secrets, ConfigMaps, pooled hosts) to
RemoteMachine keys, and the controller with its two backends."""

from __future__ import annotations

from typing import Any

from capi_remote import (
    Controller,
    Event,
    Informer,
    Provider,
    Request,
    Selector,
    Store,
    owner_of_kind,
    request_for,
)
from capi_remote.api import GROUP
from capi_remote.bootstrap import ParseSandbox, SandboxSettings
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    JOBS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote.ssh import Runner
from reconcilers import pool as pools
from reconcilers.common import CLUSTER_NAME_LABEL
from reconcilers.hostjobs import HostJobs
from reconcilers.remote import HostAccess
from reconcilers.remotemachine.cleanup import Deletion
from reconcilers.remotemachine.job_backend import JobBackend
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.nodelink import NodeLink
from reconcilers.remotemachine.policy import AttemptPolicy
from reconcilers.remotemachine.provision import ProvisionFlow
from reconcilers.remotemachine.reconciler import (
    INFRA_REF_INDEX,
    Backends,
    RemoteMachineReconciler,
    Stores,
    infrastructure_ref,
)
from reconcilers.remotemachine.runner_backend import RunnerBackend
from reconcilers.remotemachine.writer import MachineWriter
from reconcilers.secrets import (
    BOOTSTRAP_SECRET_TYPE,
    SECRET_REF_INDEX,
    ObjectSource,
    referenced_secrets,
)
from reconcilers.workload import WorkloadClients
from reconcilers.workloadnodes import WorkloadNodes

JSONDict = dict[str, Any]
DATA_SECRET_INDEX = "data-secret"
CLUSTER_INDEX = "cluster"
WAITING_INDEX = "waiting-for-host"


def machine_to_remote(machine: JSONDict) -> list[Request]:
    return [Request(*key.split("/", 1)) for key in infrastructure_ref(machine)]


def _data_secret(m: JSONDict) -> list[str]:
    name = (m.get("spec", {}).get("bootstrap") or {}).get("dataSecretName")
    return [f"{m['metadata'].get('namespace', '')}/{name}"] if name else []


def _cluster(m: JSONDict) -> list[str]:
    name = m["metadata"].get("labels", {}).get(CLUSTER_NAME_LABEL)
    return [f"{m['metadata'].get('namespace', '')}/{name}"] if name else []


def _what_machines_read(cluster: JSONDict | None) -> tuple[object, ...]:
    """What a RemoteMachine's reconcile reads of its Cluster (besides its existence)."""
    if cluster is None:
        return ()
    initialization = (cluster.get("status") or {}).get("initialization") or {}
    return (
        (cluster.get("spec") or {}).get("paused"),
        initialization.get("infrastructureProvisioned"),
        cluster["metadata"].get("deletionTimestamp"),
    )


def cluster_to_remote(capi_machines: Store, event: Event) -> list[Request]:
    """A Cluster's change wakes the RemoteMachines of its Machines, only when it changed what they
    read of it: Cluster API rewrites a Cluster's status as its Machines come and go, and waking
    all N machines of a cluster on each of those would cost N² reconciles for a scale-up."""
    if event.type == "MODIFIED" and _what_machines_read(event.old) == _what_machines_read(
        event.obj
    ):
        return []
    meta = event.obj["metadata"]
    key = f"{meta.get('namespace', '')}/{meta['name']}"
    return [
        request
        for machine in capi_machines.iter_index(CLUSTER_INDEX, key)
        for request in machine_to_remote(machine)
    ]


def index_waiting(rm: JSONDict) -> list[str]:
    """``namespace/pool`` of a RemoteMachine of a pool that has no host yet."""
    spec = rm.get("spec") or {}
    if not spec.get("pool") or spec.get("address"):
        return []
    return [f"{rm['metadata'].get('namespace', '')}/{spec['pool']}"]


def free_host_to_waiting(machines: Store, pooled: Store, event: Event) -> list[Request]:
    """A host that is free wakes the RemoteMachines waiting for a host of its pool (by index: a
    fleet of bound machines costs nothing here). A machine that holds a claimed host but is not
    bound to it yet (its first start records it) is not waiting for one."""
    if not pools.is_free(event.obj):
        return []
    meta = event.obj["metadata"]
    key = f"{meta.get('namespace', '')}/{event.obj.get('spec', {}).get('pool')}"
    return [
        request_for(rm)
        for rm in machines.iter_index(WAITING_INDEX, key)
        if pools.held_host(pooled, rm) is None
    ]


class Wake:
    """The controller's enqueue, for parts built before the controller exists (watch handlers,
    HostJobs). Called on the event loop only: runner threads hop onto it first."""

    def __init__(self) -> None:
        self.controller: Controller | None = None

    def __call__(self, request: Request) -> None:
        if self.controller is not None:
            self.controller.enqueue(request)


def setup(provider: Provider, runner: Runner) -> HostAccess:
    """Register the RemoteMachine controller; returns the HostAccess it built (pools probe
    through it too)."""
    manager = provider.manager
    remote = manager.informer(REMOTE_MACHINES)
    remote.store.add_indexer(SECRET_REF_INDEX, referenced_secrets)
    remote.store.add_indexer(WAITING_INDEX, index_waiting)
    capi_machines = manager.informer(MACHINES)
    capi_machines.store.add_indexer(DATA_SECRET_INDEX, _data_secret)
    capi_machines.store.add_indexer(CLUSTER_INDEX, _cluster)
    capi_machines.store.add_indexer(INFRA_REF_INDEX, infrastructure_ref)
    pooled = pools.pool_informer(provider).store  # indexed by SECRET_REF_INDEX too
    stores = Stores(remote.store, capi_machines.store, manager.informer(CLUSTERS).store, pooled)
    wake = Wake()

    def referenced(namespace: str, name: str) -> bool:
        """Whether any object still names ``namespace/name`` (else its watch may close)."""
        key = f"{namespace}/{name}"
        return any(
            store.by_index(index, key)
            for store, index in (
                (remote.store, SECRET_REF_INDEX),
                (pooled, SECRET_REF_INDEX),
                (capi_machines.store, DATA_SECRET_INDEX),
            )
        )

    def on_referenced_object(event: Event) -> None:
        key = f"{event.obj['metadata'].get('namespace', '')}/{event.obj['metadata']['name']}"
        for rm in remote.store.by_index(SECRET_REF_INDEX, key):
            wake(request_for(rm))
        for machine in capi_machines.store.by_index(DATA_SECRET_INDEX, key):
            for request in machine_to_remote(machine):
                wake(request)

    secrets = ObjectSource(
        manager,
        SECRETS,
        on_referenced_object,
        shared_selector=Selector(field_selector=f"type={BOOTSTRAP_SECRET_TYPE}"),
        referenced=referenced,
    )
    configmaps = ObjectSource(manager, CONFIGMAPS, on_referenced_object, referenced=referenced)
    access = HostAccess(
        runner,
        secrets,
        configmaps,
        secrets_to_unverified_hosts=provider.options.secrets_to_unverified_hosts,
    )
    reconciler = _reconciler(provider, stores, secrets, access, wake)
    wake.controller = _build(provider, reconciler, stores)

    def forget_deleted(event: Event) -> None:
        """A machine without our finalizer (never started) is gone without a last reconcile:
        what was remembered of it (its waits, invalid data) goes with it here."""
        if event.type == "DELETED":
            reconciler.forget(str(event.obj["metadata"]["uid"]))

    remote.add_handler(forget_deleted)
    return access


def _reconciler(
    provider: Provider, stores: Stores, secrets: ObjectSource, access: HostAccess, wake: Wake
) -> RemoteMachineReconciler:
    manager, client = provider.manager, provider.client
    writer = MachineWriter(client, manager.events)
    memory = MachineMemory()
    policy = AttemptPolicy()
    jobs = HostJobs(wake)

    def watch_jobs() -> Informer:
        assert wake.controller is not None  # the first reconcile runs after the wiring
        return manager.watch(
            wake.controller,
            JOBS,
            owner_of_kind(GROUP, "RemoteMachine"),
            Selector(label_selector=MACHINE_UID_LABEL),
            filtered=False,
        )

    backends = Backends(RunnerBackend(access, jobs, client), JobBackend(client, access, watch_jobs))
    workloads = WorkloadClients(secrets)
    nodes = WorkloadNodes(wake)
    # Closed in reverse order: the Node watches before the clients they read through.
    provider.on_close.extend((workloads.close, nodes.close))
    deletion = Deletion(
        client,
        writer,
        memory,
        policy,
        access,
        jobs,
        (backends.runner, backends.job),
        (stores.pooled, stores.capi_machines),
    )
    return RemoteMachineReconciler(
        client,
        stores,
        secrets,
        writer,
        backends,
        ProvisionFlow(writer, memory, policy, ParseSandbox(SandboxSettings())),
        deletion,
        NodeLink(writer, memory, workloads, nodes),
    )


def _build(provider: Provider, reconciler: RemoteMachineReconciler, stores: Stores) -> Controller:
    """The controller and what wakes it besides its own objects."""

    return (
        provider.manager.controller(
            "remotemachine",
            reconciler,
            for_=REMOTE_MACHINES,
            workers=provider.options.machine_workers,
        )
        .watches(MACHINES, lambda e: machine_to_remote(e.obj))
        .watches(CLUSTERS, lambda e: cluster_to_remote(stores.capi_machines, e))
        .watches(
            POOLED_REMOTE_MACHINES,
            lambda e: free_host_to_waiting(stores.machines, stores.pooled, e),
        )
        .build()
    )
