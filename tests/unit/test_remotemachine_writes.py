"""How many API writes a RemoteMachine costs (issue 15, P5), counted at the client: the reconciler
with its real writer, flow and dispatch over a client that applies merge patches in memory and
an informer cache fed with what was written; only the bootstrap itself is a scripted backend.

- A standalone machine whose bootstrap ends before its first progress write: two writes (the
  finalizer with the providerID just before the start, then ``Provisioned``).
- A pooled machine: three, the claim on the host, the finalizer with the claimed host and the
  providerID just before the start, ``Provisioned``.
- A provisioned machine reconciled again writes nothing (Cluster API's ResourceVersionStable).
- A long bootstrap still shows "step k of n", coalesced.
"""

from __future__ import annotations

import base64
import copy
import itertools
from datetime import UTC, datetime
from typing import Any

import attrs
import structlog

from capi_remote import ReconcileContext, Request, Result, Store
from capi_remote.api import (
    HOST_KEY_FINGERPRINT_ANNOTATION,
    PROVIDER_ID_SET_FOR_ANNOTATION,
    RemoteMachineSpec,
    from_dict,
)
from reconcilers import conditions as c
from reconcilers import pool as pools
from reconcilers.hostjobs import Outcome
from reconcilers.remotemachine.backend import Finished, Machine, Running
from reconcilers.remotemachine.machinestatus import FINALIZER, provisioned_before
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.nodelink import NodeLink
from reconcilers.remotemachine.policy import AttemptPolicy
from reconcilers.remotemachine.provision import ProvisionFlow
from reconcilers.remotemachine.reconciler import (
    INFRA_REF_INDEX,
    OWNER_PATIENCE,
    QUIET_WAITS,
    Backends,
    RemoteMachineReconciler,
    Stores,
    infrastructure_ref,
)
from reconcilers.remotemachine.writer import MachineWriter
from tests.support.merge_patch import apply_merge_patch
from tests.unit.test_remotemachine_flow import CountingParser, FakeBackend, runner_like

JSONDict = dict[str, Any]
LOG = structlog.get_logger("test")
NS = "ns"
ADDRESS = "192.0.2.10"


class CountingClient:
    """The API server's objects by (plural, name); every write is counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], JSONDict] = {}
        self.writes: list[str] = []
        self._versions = itertools.count(100)

    def put(self, plural: str, obj: JSONDict) -> JSONDict:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[(plural, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, resource: Any, namespace: str, name: str) -> JSONDict:
        return copy.deepcopy(self.objects[(resource.plural, name)])

    async def patch(
        self,
        resource: Any,
        namespace: str,
        name: str,
        patch: JSONDict,
        subresource: str | None = None,
    ) -> JSONDict:
        current = self.objects[(resource.plural, name)]
        wanted = patch.get("metadata", {}).get("resourceVersion")
        assert wanted in (None, current["metadata"]["resourceVersion"]), "a stale write"
        body = {k: v for k, v in patch.items() if (k == "status") == (subresource == "status")}
        if subresource != "status" and "metadata" in patch:
            body["metadata"] = {
                k: v for k, v in patch["metadata"].items() if k != "resourceVersion"
            }
        updated: JSONDict = apply_merge_patch(current, body)  # type: ignore[assignment]
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        self.writes.append(f"{resource.plural}{'/' + subresource if subresource else ''}")
        return self.put(resource.plural, updated)


@attrs.define
class Events:
    recorded: list[tuple[str, str]] = attrs.field(factory=list)

    def record(self, obj: JSONDict, type_: str, reason: str, message: str) -> None:
        self.recorded.append((type_, reason))


class Secrets:
    def get(self, namespace: str, name: str) -> JSONDict | None:
        text = "#cloud-config\nruncmd:\n- echo one\n- echo two\n- echo three\n"
        return {
            "metadata": {"name": name, "namespace": namespace, "uid": "s", "resourceVersion": "1"},
            "data": {"value": base64.b64encode(text.encode()).decode()},
        }


class Nodes:
    def release(self, key: Any, request: Request) -> None:
        pass


@attrs.define
class World:
    client: CountingClient
    stores: Stores
    backend: FakeBackend
    reconciler: RemoteMachineReconciler
    events: Events
    memory: MachineMemory

    @property
    def rm(self) -> JSONDict:
        return self.client.objects[("remotemachines", "m")]

    def sync(self) -> None:
        """The informers deliver what the API server holds."""
        for (plural, _), obj in self.client.objects.items():
            store = {
                "remotemachines": self.stores.machines,
                "pooledremotemachines": self.stores.pooled,
            }.get(plural)
            if store is not None:
                store.upsert(copy.deepcopy(obj))

    async def reconcile(self) -> Result:
        self.sync()
        ctx = ReconcileContext(controller="remotemachine", reconcile_id="r", log=LOG)
        return await self.reconciler.reconcile(ctx, Request(NS, "m"))

    def writes(self) -> list[str]:
        return [w for w in self.client.writes if not w.startswith("machines")]


def world(spec: JSONDict, pooled: JSONDict | None = None) -> World:
    client = CountingClient()
    client.put(
        "remotemachines",
        {
            "metadata": {
                "name": "m",
                "namespace": NS,
                "uid": "uid-1",
                "generation": 1,
                "ownerReferences": [
                    {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m"}
                ],
            },
            "spec": spec,
        },
    )
    if pooled is not None:
        client.put("pooledremotemachines", pooled)
    stores = Stores(
        Store(),
        Store({INFRA_REF_INDEX: infrastructure_ref}),
        Store(),
        Store(pools.INDEXERS),
    )
    stores.capi_machines.upsert(
        {
            "metadata": {"name": "m", "namespace": NS, "labels": {}},
            "spec": {"clusterName": "c", "bootstrap": {"dataSecretName": "data"}},
            "status": {"nodeRef": {"name": "m"}},
        }
    )
    stores.clusters.upsert(
        {
            "metadata": {"name": "c", "namespace": NS},
            "spec": {},
            "status": {"initialization": {"infrastructureProvisioned": True}},
        }
    )
    events = Events()
    writer = MachineWriter(client, events)  # type: ignore[arg-type]
    memory = MachineMemory()
    backend = runner_like()
    flow = ProvisionFlow(writer, memory, AttemptPolicy(), CountingParser())
    reconciler = RemoteMachineReconciler(
        client,  # type: ignore[arg-type]
        stores,
        Secrets(),  # type: ignore[arg-type]
        writer,
        Backends(backend, FakeBackend()),
        flow,
        None,  # type: ignore[arg-type]  # no deletion here
        NodeLink(writer, memory, None, Nodes()),  # type: ignore[arg-type]
    )
    return World(client, stores, backend, reconciler, events, memory)


def finished(steps: int = 3) -> Finished:
    outcome = Outcome(True, c.PROVISIONED, f"{ADDRESS} bootstrapped")
    return Finished(1, 2, outcome, steps_total=steps, steps_done=steps)


async def provision(w: World) -> None:
    """Reconcile until the job started, let it finish, reconcile until provisioned."""
    for _ in range(4):
        await w.reconcile()
        if w.backend.starts:
            break
    assert w.backend.starts == [1]
    w.backend.seen = finished()
    await w.reconcile()
    assert w.rm["status"]["initialization"] == {"provisioned": True}


async def test_a_quick_bootstrap_costs_two_writes_and_steady_state_none() -> None:
    w = world({"address": ADDRESS, "port": 22, "sshKeyRef": {"name": "k"}})
    await provision(w)
    assert w.writes() == ["remotemachines", "remotemachines/status"]
    rm = w.rm
    assert rm["metadata"]["finalizers"] == [FINALIZER]
    # The providerID came with the finalizer, before the bootstrap, marked as set for this UID:
    # the machine does not count as provisioned before (its host's sentinel is not its own).
    assert rm["spec"]["providerID"] == f"remote-machine://{ADDRESS}:22"
    assert rm["metadata"]["annotations"][PROVIDER_ID_SET_FOR_ANNOTATION] == "uid-1"
    assert rm["status"]["bootstrap"] == {"attempts": 1, "stepsTotal": 3, "stepsDone": 3}
    ready = next(x for x in rm["status"]["conditions"] if x["type"] == c.READY)
    assert (ready["status"], ready["reason"]) == ("True", c.PROVISIONED)
    assert ready["observedGeneration"] == rm["metadata"]["generation"]
    assert w.events.recorded == [("Normal", c.PROVISIONING), ("Normal", c.PROVISIONED)]
    # Steady state: reconciled again and again (Machine updates, resyncs), it writes nothing.
    before = list(w.client.writes)
    for _ in range(3):
        await w.reconcile()
    assert w.client.writes == before


async def test_a_pooled_machine_gets_its_provider_id_with_the_claimed_host() -> None:
    pooled = {
        "metadata": {"name": "host-a", "namespace": NS, "uid": "p-1", "generation": 2},
        "spec": {
            "pool": "workers",
            "machine": {"address": ADDRESS, "port": 2222, "sshKeyRef": {"name": "k"}},
        },
        "status": {"health": {"state": "Healthy", "observedGeneration": 2}},
    }
    w = world({"pool": "workers"}, pooled)
    await provision(w)
    assert w.writes() == [
        "pooledremotemachines",  # the claim
        "remotemachines",  # at the start: finalizer, the host's address, port, key, providerID
        "remotemachines/status",
    ]
    assert w.rm["spec"]["providerID"] == f"remote-machine://{ADDRESS}:2222"
    assert w.rm["metadata"]["finalizers"] == [FINALIZER]
    assert ("Normal", c.CLAIMED) in w.events.recorded
    before = list(w.client.writes)
    await w.reconcile()
    assert w.client.writes == before


async def test_a_long_bootstrap_shows_its_steps_coalesced() -> None:
    w = world({"address": ADDRESS, "port": 22, "sshKeyRef": {"name": "k"}})
    await w.reconcile()
    await w.reconcile()
    assert w.backend.starts == [1]
    for done in range(3):  # progress reports within one interval: nothing written
        w.backend.seen = Running(1, c.PROVISIONING, f"step {done + 1} of 3", done, 3)
        result = await w.reconcile()
        assert result.requeue_after is not None and result.requeue_after > 0
    assert w.writes() == ["remotemachines"]
    w.memory["uid-1"].progress_due = 0.0  # the interval is over: the latest state is written
    await w.reconcile()
    status = w.rm["status"]
    assert status["bootstrap"] == {"attempts": 1, "stepsTotal": 3, "stepsDone": 2}
    ready = next(x for x in status["conditions"] if x["type"] == c.READY)
    assert ready["message"] == "step 3 of 3" and status["phase"] == "Provisioning"
    w.backend.seen = finished()
    await w.reconcile()
    assert w.writes() == ["remotemachines", "remotemachines/status", "remotemachines/status"]


def test_provisioned_before_reads_what_survives_a_move() -> None:
    meta: JSONDict = {"uid": "new", "annotations": {PROVIDER_ID_SET_FOR_ANNOTATION: "new"}}
    early: JSONDict = {"metadata": meta, "spec": {"providerID": "remote-machine://h:22"}}
    assert not provisioned_before(early)  # set ahead of this machine's own bootstrap
    moved = copy.deepcopy(early)
    moved["metadata"]["uid"] = "recreated-by-move"
    assert provisioned_before(moved)
    reference = {"metadata": {"uid": "x"}, "spec": {"providerID": "remote-machine://h:22"}}
    assert provisioned_before(reference)  # the reference sets it once provisioned
    assert not provisioned_before({"metadata": {"uid": "x"}, "spec": {}})


def test_machine_adopts_only_what_was_provisioned_before() -> None:
    meta: JSONDict = {"uid": "u", "annotations": {PROVIDER_ID_SET_FOR_ANNOTATION: "u"}}
    rm: JSONDict = {
        "metadata": meta,
        "spec": {"address": ADDRESS, "providerID": "remote-machine://x:22"},
    }
    machine = Machine(rm, from_dict(RemoteMachineSpec, rm["spec"]), {}, Request(NS, "m"), LOG)
    assert not machine.adopts


async def test_a_machine_named_by_a_machine_waits_quietly_for_its_owner_reference() -> None:
    """A MachineSet creates the RemoteMachine, then the Machine, whose controller adopts it
    later (seconds on a busy API server): meanwhile nothing is written about the wait."""
    w = world({"address": ADDRESS, "port": 22, "sshKeyRef": {"name": "k"}})
    meta = w.rm["metadata"]
    del meta["ownerReferences"]
    meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = copy.deepcopy(w.stores.capi_machines.get_by_name(NS, "m"))
    assert machine is not None
    machine["spec"]["infrastructureRef"] = {"kind": "RemoteMachine", "name": "m"}
    w.stores.capi_machines.upsert(machine)
    result = await w.reconcile()
    assert w.writes() == [] and "status" not in w.rm
    assert result.requeue_after is not None
    assert QUIET_WAITS < result.requeue_after <= OWNER_PATIENCE
    machine = copy.deepcopy(machine)
    machine["spec"]["infrastructureRef"] = {"kind": "RemoteMachine", "name": "other"}
    w.stores.capi_machines.upsert(machine)  # nothing names it: the usual quiet
    result = await w.reconcile()
    assert result.requeue_after is not None and result.requeue_after <= QUIET_WAITS


async def test_a_machine_provisioned_elsewhere_gets_the_finalizer_once() -> None:
    """Provisioned by the reference provider (or adopted) without our finalizer: its deletion
    must clean the host too, so it gets the finalizer, in one write, and then nothing more."""
    w = world(
        {
            "address": ADDRESS,
            "port": 22,
            "sshKeyRef": {"name": "k"},
            "providerID": f"remote-machine://{ADDRESS}:22",
        }
    )
    w.client.objects[("remotemachines", "m")]["status"] = {"initialization": {"provisioned": True}}
    await w.reconcile()
    assert w.writes() == ["remotemachines"]
    assert w.rm["metadata"]["finalizers"] == [FINALIZER]
    await w.reconcile()  # the steady state (its conditions, which this status lacked)
    settled = w.writes()
    for _ in range(2):
        await w.reconcile()
    assert w.writes() == settled and w.backend.starts == []


async def test_a_pin_edited_after_the_start_is_restored_with_an_event() -> None:
    """Before its start, a pooled machine's own pins do not count and the start's write replaces
    them with the host's; once bound, an edit is undone with a HostPinsRestored Event."""
    pooled = {
        "metadata": {
            "name": "host-a",
            "namespace": NS,
            "uid": "p-1",
            "generation": 2,
            "annotations": {HOST_KEY_FINGERPRINT_ANNOTATION: "SHA256:host"},
        },
        "spec": {"pool": "workers", "machine": {"address": ADDRESS, "sshKeyRef": {"name": "k"}}},
        "status": {"health": {"state": "Healthy", "observedGeneration": 2}},
    }
    w = world({"pool": "workers"}, pooled)
    w.client.objects[("remotemachines", "m")]["metadata"]["annotations"] = {
        HOST_KEY_FINGERPRINT_ANNOTATION: "SHA256:tenant"
    }
    await provision(w)
    assert w.rm["metadata"]["annotations"][HOST_KEY_FINGERPRINT_ANNOTATION] == "SHA256:host"
    assert ("Warning", c.HOST_PINS_RESTORED) not in w.events.recorded
    w.client.objects[("remotemachines", "m")]["metadata"]["annotations"][
        HOST_KEY_FINGERPRINT_ANNOTATION
    ] = "SHA256:tenant"
    await w.reconcile()
    assert w.rm["metadata"]["annotations"][HOST_KEY_FINGERPRINT_ANNOTATION] == "SHA256:host"
    assert ("Warning", c.HOST_PINS_RESTORED) in w.events.recorded
