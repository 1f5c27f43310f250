"""When the pool reconciler probes a free host, and which probe may answer a re-check request.

A fake API server keeps one PooledRemoteMachine as the real one does (merge patches,
resourceVersion preconditions, generation bumped by spec changes); the reconciler's cache is
updated only when a test says so, so a lagging watch is part of the scenario. The prober is a
fake that can be held at a gate, so a request can land while a probe runs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any, cast

import attrs
import pytest
import structlog

from capi_remote import ApiError, Conflict, Informer, KubeClient, ReconcileContext, Request
from capi_remote.kube.client import Resource
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote.ssh import HostKeyMismatch, HostKeyUnknown, HostUnreachable, SSHError
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.hostkeys import HostKeyPolicy
from capi_remote.ssh.probe import HostFacts, Leftovers
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from reconcilers.pool import RECHECK_ANNOTATION, is_free
from reconcilers.pool import reconciler as pool
from reconcilers.pool.reconciler import PooledRemoteMachineReconciler
from reconcilers.remote import HostAccess
from tests.support.events import RecordedEvents
from tests.support.merge_patch import apply_merge_patch
from tests.unit.test_first_use_pins import facts

JSONDict = dict[str, Any]
NAMESPACE, NAME = "tenant", "rack1-node3"
PROBED_AT = "2026-12-02T06:00:00Z"
HEALTHY: JSONDict = {"state": "Healthy", "reachable": True, "message": "logged in as root"}


class FakeServer:
    """One PooledRemoteMachine as the API server keeps it."""

    def __init__(self, obj: JSONDict) -> None:
        self.obj = obj
        self.versions = {obj["metadata"]["resourceVersion"]: copy.deepcopy(obj)}

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        return copy.deepcopy(self.obj)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: JSONDict,
        *,
        subresource: str = "",
    ) -> JSONDict:
        meta = self.obj["metadata"]
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != meta["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        body = copy.deepcopy(patch)
        body.get("metadata", {}).pop("resourceVersion", None)
        if subresource == "status":  # the status subresource ignores everything else
            body = {"status": body.get("status", {})}
        else:
            body.pop("status", None)
        updated = cast(JSONDict, apply_merge_patch(self.obj, body))
        if updated != self.obj:  # a patch that changes nothing is no new version
            if updated.get("spec") != self.obj.get("spec"):
                updated["metadata"]["generation"] = meta["generation"] + 1
            updated["metadata"]["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
            self.obj = updated
            self.versions[updated["metadata"]["resourceVersion"]] = copy.deepcopy(updated)
        return copy.deepcopy(self.obj)

    def annotations(self) -> dict[str, str]:
        return dict(self.obj["metadata"].get("annotations") or {})


class GatedProber:
    """Answers ``result``; while ``gate`` is clear a probe waits at it, as a slow login does."""

    def __init__(self, result: JSONDict) -> None:
        self.result = result
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()
        self.probed: list[JSONDict] = []

    async def __call__(self, pooled: JSONDict) -> JSONDict:
        self.probed.append(copy.deepcopy(pooled))
        self.waiting.set()
        await self.gate.wait()
        return dict(self.result)


class Bed:
    def __init__(self, obj: JSONDict, result: JSONDict = HEALTHY) -> None:
        self.server = FakeServer(obj)
        client = cast(KubeClient, self.server)
        self.pooled = Informer(client, POOLED_REMOTE_MACHINES)
        self.prober = GatedProber(result)
        self.reconciler = PooledRemoteMachineReconciler(
            client,
            self.pooled,
            Informer(client, REMOTE_MACHINES),
            self.prober,
            RecordedEvents().as_recorder(),
        )
        self.catch_up()

    def catch_up(self, resource_version: str | None = None) -> None:
        """The watch delivers the server's current version (or an earlier one) to the cache."""
        version = self.server.versions[resource_version] if resource_version else self.server.obj
        self.pooled.store.upsert(copy.deepcopy(version))

    async def reconcile(self) -> None:
        """One reconcile from the cache; a Conflict is a requeue, as in the controller."""
        ctx = ReconcileContext("pooledremotemachine", "test", structlog.get_logger())
        with contextlib.suppress(Conflict):
            await self.reconciler.reconcile(ctx, Request(NAMESPACE, NAME))


def pooled_host(*, generation: int = 1, annotations: dict[str, str] | None = None) -> JSONDict:
    """A free host whose last probe (at ``generation``'s spec, a moment ago) found it healthy."""
    return {
        "metadata": {
            "namespace": NAMESPACE,
            "name": NAME,
            "uid": "u1",
            "generation": generation,
            "resourceVersion": "10",
            "annotations": dict(annotations or {}),
        },
        "spec": {"pool": "rack1", "machine": {"address": "192.0.2.10", "port": 22}},
        "status": {
            "reserved": False,
            "health": {**HEALTHY, "observedGeneration": generation, "lastProbeTime": PROBED_AT},
        },
    }


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes end in the second of the last one: their status is the one already written."""
    monkeypatch.setattr(pool, "_now", lambda: PROBED_AT)
    monkeypatch.setattr(pool, "_age", lambda timestamp: 0.0)


async def test_a_recheck_asked_for_while_a_probe_runs_is_answered_by_a_later_probe(
    frozen_clock: None,
) -> None:
    # issue 18, step by step. A returned host (last probed before its claim) is marked; its
    # re-check probe writes the status, then clears the mark.
    returned = pooled_host(annotations={RECHECK_ANNOTATION: "true"})
    returned["status"]["health"]["lastProbeTime"] = "2026-12-02T05:00:00Z"
    bed = Bed(returned)
    await bed.reconcile()
    status_written = str(int(bed.server.obj["metadata"]["resourceVersion"]) - 1)
    marked_then = bed.server.versions[status_written]
    assert marked_then["status"]["health"]["lastProbeTime"] == PROBED_AT
    assert RECHECK_ANNOTATION in marked_then["metadata"]["annotations"]
    assert RECHECK_ANNOTATION not in bed.server.annotations()
    # The status write's event reached the cache, the clearing's not yet: the next reconcile
    # still sees the mark and probes again, held at the gate (the login takes a moment).
    bed.catch_up(status_written)
    bed.prober.gate.clear()
    second = asyncio.create_task(bed.reconcile())
    await bed.prober.waiting.wait()
    # Meanwhile the host's key changes and someone asks for a re-check.
    ask = {"metadata": {"annotations": {RECHECK_ANNOTATION: "true"}}}
    await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, NAME, ask)
    bed.prober.gate.set()
    await second  # its result, the status already written, writes nothing

    assert bed.server.annotations().get(RECHECK_ANNOTATION) == "true", (
        "a probe that started before the request cleared it"
    )
    bed.catch_up()
    await bed.reconcile()
    assert len(bed.prober.probed) == 3
    assert RECHECK_ANNOTATION in bed.prober.probed[-1]["metadata"]["annotations"]
    assert RECHECK_ANNOTATION not in bed.server.annotations()


async def test_a_recheck_is_cleared_by_the_probe_that_answers_it(frozen_clock: None) -> None:
    bed = Bed(pooled_host(annotations={RECHECK_ANNOTATION: "true"}))
    await bed.reconcile()
    assert len(bed.prober.probed) == 1
    assert RECHECK_ANNOTATION not in bed.server.annotations()


async def test_a_host_probed_at_its_current_spec_is_not_probed_again_before_due(
    frozen_clock: None,
) -> None:
    bed = Bed(pooled_host())
    await bed.reconcile()
    assert bed.prober.probed == []


async def test_adding_a_host_key_policy_probes_the_host_at_once(frozen_clock: None) -> None:
    # issue 16 point 3: without a policy the probe could not verify the key; the user adds one.
    unverified = pooled_host()
    unverified["status"]["health"] = {
        "state": "Untrusted",
        "reachable": False,
        "message": "HostKeyUnknown: no known host key",
        "observedGeneration": 1,
        "lastProbeTime": PROBED_AT,
    }
    bed = Bed(unverified)
    policy = {"hostKeyPolicy": {"trustOnFirstUse": True}}
    await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, NAME, {"spec": {"machine": policy}})
    bed.catch_up()
    await bed.reconcile()
    assert [p["spec"]["machine"].get("hostKeyPolicy") for p in bed.prober.probed] == [
        policy["hostKeyPolicy"]
    ]
    health = bed.server.obj["status"]["health"]
    assert (health["state"], health["observedGeneration"]) == ("Healthy", 2)


async def test_a_probe_of_the_old_spec_is_not_written_over_the_new_one(frozen_clock: None) -> None:
    bed = Bed(pooled_host(annotations={RECHECK_ANNOTATION: "true"}))
    before = copy.deepcopy(bed.server.obj["status"])
    bed.prober.gate.clear()
    first = asyncio.create_task(bed.reconcile())
    await bed.prober.waiting.wait()
    moved = {"spec": {"machine": {"address": "192.0.2.11"}}}
    await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, NAME, moved)
    bed.prober.gate.set()
    await first
    assert bed.server.obj["status"] == before
    assert bed.server.annotations().get(RECHECK_ANNOTATION) == "true"

    bed.catch_up()
    await bed.reconcile()
    assert bed.prober.probed[-1]["spec"]["machine"]["address"] == "192.0.2.11"
    assert bed.server.obj["status"]["health"]["observedGeneration"] == 2
    assert RECHECK_ANNOTATION not in bed.server.annotations()


def _untrusted(host: JSONDict) -> JSONDict:
    host["spec"]["machine"]["hostKeyPolicy"] = {
        "knownHostsRef": {"kind": "ConfigMap", "name": "known-hosts"}
    }
    host["status"]["health"] = {
        "state": "Untrusted",
        "reachable": False,
        "message": "HostKeyUnknown: the host presented ssh-ed25519 SHA256:abc",
        "observedGeneration": 1,
        "lastProbeTime": PROBED_AT,
    }
    return host


async def test_a_changed_known_hosts_probes_the_host_at_once(frozen_clock: None) -> None:
    # issue 16 point 3: the policy names a ConfigMap; the host's line is added to it later. The
    # spec does not change, so only the ConfigMap's change can bring the probe forward.
    bed = Bed(_untrusted(pooled_host()))
    await bed.reconcile()
    assert bed.prober.probed == [], "nothing changed: the next probe is the periodic one"

    bed.reconciler.references_changed(Request(NAMESPACE, NAME))
    await bed.reconcile()
    assert len(bed.prober.probed) == 1
    assert bed.server.obj["status"]["health"]["state"] == "Healthy"
    await bed.reconcile()
    assert len(bed.prober.probed) == 1, "one change, one probe"


async def test_a_change_while_a_probe_runs_gets_a_probe_of_its_own(frozen_clock: None) -> None:
    bed = Bed(_untrusted(pooled_host()))
    bed.reconciler.references_changed(Request(NAMESPACE, NAME))
    bed.prober.gate.clear()
    first = asyncio.create_task(bed.reconcile())
    await bed.prober.waiting.wait()
    bed.reconciler.references_changed(Request(NAMESPACE, NAME))  # e.g. a second edit
    bed.prober.gate.set()
    await first
    bed.catch_up()
    await bed.reconcile()
    assert len(bed.prober.probed) == 2


async def test_a_change_is_kept_for_the_retry_of_a_reconcile_that_failed(
    frozen_clock: None,
) -> None:
    bed = Bed(_untrusted(pooled_host()))
    bed.reconciler.references_changed(Request(NAMESPACE, NAME))
    bed.prober.gate.clear()
    first = asyncio.create_task(bed.reconcile())
    await bed.prober.waiting.wait()
    # The status changes meanwhile (another writer): the probe's write is a Conflict.
    await bed.server.patch(
        POOLED_REMOTE_MACHINES,
        NAMESPACE,
        NAME,
        {"status": {"reserved": False, "x": 1}},
        subresource="status",
    )
    bed.prober.gate.set()
    await first
    assert bed.server.obj["status"]["health"]["state"] == "Untrusted"
    bed.catch_up()
    await bed.reconcile()
    assert len(bed.prober.probed) == 2
    assert bed.server.obj["status"]["health"]["state"] == "Healthy"


class _Access:
    """A HostAccess whose probe fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def target_for(self, namespace: str, spec: JSONDict, pins: dict[str, str]) -> object:
        return object()

    async def probe(self, target: object) -> object:
        raise self.error


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (HostKeyUnknown("192.0.2.10", "SHA256:abc", "ssh-ed25519"), "Untrusted"),
        (HostKeyMismatch("192.0.2.10", ("SHA256:old",), "SHA256:abc", "ssh-ed25519"), "Untrusted"),
        (HostUnreachable("192.0.2.10", "connection refused"), "Unreachable"),
    ],
)
async def test_a_host_that_answers_with_an_untrusted_key_is_untrusted_not_unreachable(
    error: SSHError, state: str
) -> None:
    prober = pool.probe_with(cast(HostAccess, _Access(error)))
    health = await prober(pooled_host())
    assert health["state"] == state
    assert health["reachable"] is False
    assert str(health["message"]).startswith(f"{error.reason}: ")
    taken = {**pooled_host(), "status": {"health": health}}
    assert is_free(taken) is (state not in ("Untrusted", "Unreachable"))


class _Found:
    """A HostAccess whose probe logs in and finds ``leftovers``."""

    def __init__(self, leftovers: Leftovers) -> None:
        self.leftovers = leftovers

    def target_for(self, namespace: str, spec: JSONDict, pins: dict[str, str]) -> Target:
        return Target(
            address="192.0.2.10",
            credentials=Credentials(user="root", password="x"),
            host_key=HostKeyPolicy.skip_verification(),
        )

    async def probe(self, target: Target) -> HostFacts:
        return attrs.evolve(facts("SHA256:" + "A" * 43), leftovers=self.leftovers)


DIRTY = Leftovers(
    sentinel=SSHSettings().sentinel_path, state_root="/var/lib/capi-remote", state_dirs=2
)


async def test_a_host_with_a_bootstraps_leftovers_is_not_clean_and_not_claimable() -> None:
    health = await pool.probe_with(cast(HostAccess, _Found(DIRTY)))(pooled_host())
    assert (health["state"], health["reachable"]) == ("NotClean", True)
    message = str(health["message"])
    assert "the success sentinel /run/cluster-api/bootstrap-success.complete" in message
    assert "2 state directories under /var/lib/capi-remote" in message
    assert "rm -f /run/cluster-api/bootstrap-success.complete; rm -rf /var/lib/capi-remote/*" in (
        message
    )
    assert RECHECK_ANNOTATION in message
    assert health["facts"]["hostname"] == "h", "facts are still reported"
    assert not is_free({**pooled_host(), "status": {"health": {**health, "observedGeneration": 1}}})

    clean = await pool.probe_with(cast(HostAccess, _Found(Leftovers())))(pooled_host())
    assert (clean["state"], clean["message"]) == ("Healthy", "logged in as root")


async def test_a_dirty_host_is_reported_once_and_a_cleaned_one_is_healthy_again(
    frozen_clock: None,
) -> None:
    bed = Bed(pooled_host(annotations={RECHECK_ANNOTATION: "true"}))
    events = RecordedEvents()
    bed.reconciler.events = events.as_recorder()
    not_clean = {"state": "NotClean", "reachable": True, "message": "found the sentinel"}

    async def recheck(result: JSONDict) -> str:
        bed.prober.result = result
        ask = {"metadata": {"annotations": {RECHECK_ANNOTATION: str(len(bed.prober.probed))}}}
        await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, NAME, ask)
        bed.catch_up()
        await bed.reconcile()
        bed.catch_up()
        assert RECHECK_ANNOTATION not in bed.server.annotations(), "the re-check was answered"
        return str(bed.server.obj["status"]["health"]["state"])

    assert await recheck(not_clean) == "NotClean"
    assert not is_free(bed.server.obj)
    assert await recheck(not_clean) == "NotClean", "not cleaned yet"
    assert events.recorded == [(NAME, "Warning", "HostNotClean", "found the sentinel")]
    assert await recheck(HEALTHY) == "Healthy"
    assert is_free(bed.server.obj)
    assert await recheck(not_clean) == "NotClean"
    assert events.reasons() == ["HostNotClean", "HostNotClean"], "a new finding, a new Event"
