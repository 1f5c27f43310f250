"""Issue 13 point 6: a RemoteMachine bound to a pooled host gets the host's key pins, never its
own, so the machine's author cannot choose which key the pool's host is trusted with: not at
the claim, and not by editing the machine's pin annotations afterwards (only the host's pins are
used to verify, and first-use pins are recorded on the host)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import pytest
import structlog

from capi_remote import ApiError, Conflict, KubeClient, Request
from capi_remote.api import BASTION_HOST_KEY_FINGERPRINT_ANNOTATION as BASTION_PIN
from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from capi_remote.api import RemoteMachineSpec, from_dict
from capi_remote.kube.client import Resource
from reconcilers.pool.claims import host_spec_for, pin_edits, with_host_pins
from reconcilers.remotemachine.backend import Machine
from reconcilers.remotemachine.pins import record_pins
from tests.unit.test_host_access import KEY, access

JSONDict = dict[str, Any]
HOST_KEY = "SHA256:" + "A" * 43
TENANT_KEY = "SHA256:" + "B" * 43
LOG = structlog.get_logger("test")


def machine(annotations: dict[str, str]) -> JSONDict:
    return {"metadata": {"name": "m", "annotations": annotations}, "spec": {"port": 22}}


def pooled(annotations: dict[str, str]) -> JSONDict:
    return {
        "metadata": {"name": "h", "annotations": annotations},
        "spec": {"machine": {"address": "192.0.2.1", "hostKeyPolicy": {"trustOnFirstUse": True}}},
    }


@pytest.mark.parametrize("pin", [PIN, BASTION_PIN])
def test_the_pooled_hosts_pin_wins(pin: str) -> None:
    bound = host_spec_for(machine({pin: TENANT_KEY, "note": "kept"}), pooled({pin: HOST_KEY}))
    assert bound["metadata"]["annotations"] == {pin: HOST_KEY, "note": "kept"}


def test_a_machines_own_pin_is_dropped_for_an_unpinned_host() -> None:
    bound = host_spec_for(machine({PIN: TENANT_KEY, BASTION_PIN: TENANT_KEY}), pooled({}))
    assert bound["metadata"]["annotations"] == {}
    assert bound["spec"]["address"] == "192.0.2.1"


# -- after the claim: the machine's author edits its pins ---------------------------------------


def claimed(annotations: dict[str, str]) -> JSONDict:
    """A RemoteMachine bound to ``pooled``: its spec is the host's, its pins whatever it says."""
    rm = host_spec_for(
        {"metadata": {"name": "m", "namespace": "ns", "uid": "u-m"}, "spec": {"pool": "p"}},
        pooled({}),
    )
    rm["metadata"]["annotations"] = dict(annotations)
    rm["spec"]["sshKeyRef"] = {"name": "k"}
    return rm


@pytest.mark.parametrize(
    ("host_pins", "edited", "used"),
    [
        ({PIN: HOST_KEY}, {PIN: TENANT_KEY}, (HOST_KEY,)),  # a pin rewritten
        ({}, {PIN: TENANT_KEY}, ()),  # a pin added where the host has none: still unpinned
        ({PIN: HOST_KEY}, {}, (HOST_KEY,)),  # a pin removed
    ],
    ids=["rewritten", "added", "removed"],
)
def test_a_claimed_machine_is_verified_against_its_hosts_pins_only(
    host_pins: dict[str, str], edited: dict[str, str], used: tuple[str, ...]
) -> None:
    rm, host = claimed(edited), pooled(host_pins)
    assert pin_edits(rm, host) != {}, "the reconciler restores the host's pins"
    view = with_host_pins(rm, host)
    assert {k: v for k, v in view["metadata"]["annotations"].items()} == host_pins
    target = access({("k", "value"): KEY.encode()}).target(view)
    assert target.host_key.mode == "trust_on_first_use"
    assert target.host_key.fingerprints == used
    assert rm["metadata"]["annotations"] == edited, "the object read is not changed"


def test_a_machine_with_its_hosts_pins_needs_no_edit() -> None:
    rm, host = claimed({PIN: HOST_KEY, "note": "kept"}), pooled({PIN: HOST_KEY})
    assert pin_edits(rm, host) == {}
    assert with_host_pins(rm, host) is rm
    assert with_host_pins(rm, None) is rm  # holding no pooled host: its own pins


class Server:
    """The PooledRemoteMachine and the RemoteMachine as the API server keeps them."""

    def __init__(self, *objects: JSONDict) -> None:
        self.objects = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.patched: list[tuple[str, JSONDict]] = []

    async def get(self, resource: Resource, namespace: str, name: str) -> JSONDict:
        return copy.deepcopy(self.objects[(namespace, name)])

    async def patch(self, resource: Resource, namespace: str, name: str, patch: JSONDict) -> Any:
        self.patched.append((resource.kind, patch))
        obj = self.objects[(namespace, name)]
        obj["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        return copy.deepcopy(obj)


def test_first_use_pins_of_a_held_host_are_recorded_on_the_host() -> None:
    host = pooled({})
    host["metadata"].update(namespace="ns", uid="u-h", resourceVersion="7")
    rm = claimed({PIN: TENANT_KEY})  # edited before the first use
    rm["metadata"]["resourceVersion"] = "3"
    server = Server(host, rm)
    machine = Machine(
        rm, from_dict(RemoteMachineSpec, rm["spec"]), {}, Request("ns", "m"), LOG, host
    )
    client = cast(KubeClient, server)
    in_force = asyncio.run(record_pins(client, machine, {PIN: HOST_KEY}))
    assert in_force == {PIN: HOST_KEY}, "the key seen, not the machine's edit"
    [(kind, patch)] = server.patched
    assert kind == "PooledRemoteMachine"
    assert patch["metadata"] == {"annotations": {PIN: HOST_KEY}, "resourceVersion": "7"}
    # A later attempt finds the host's pin and keeps it, whatever key it sees.
    assert asyncio.run(record_pins(client, machine, {PIN: TENANT_KEY})) == {PIN: HOST_KEY}


class BusyServer(Server):
    """Another writer (Cluster API) updates the object between our read and our write, twice."""

    def __init__(self, *objects: JSONDict, conflicts: int) -> None:
        super().__init__(*objects)
        self.conflicts = conflicts
        self.reads = 0

    async def get(self, resource: Resource, namespace: str, name: str) -> JSONDict:
        self.reads += 1
        return await super().get(resource, namespace, name)

    async def patch(self, resource: Resource, namespace: str, name: str, patch: JSONDict) -> Any:
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError(409, "Conflict", "the object has been modified")
        return await super().patch(resource, namespace, name, patch)


def test_a_pin_write_that_meets_a_concurrent_update_is_tried_again() -> None:
    """A Conflict on the pin write must not end the attempt before anything ran (it did: the
    attempt failed InternalError and, with maxAttempts 1, the machine for good)."""
    rm = claimed({})
    rm["metadata"]["resourceVersion"] = "3"
    server = BusyServer(rm, conflicts=2)
    machine = Machine(rm, from_dict(RemoteMachineSpec, rm["spec"]), {}, Request("ns", "m"), LOG)
    in_force = asyncio.run(record_pins(cast(KubeClient, server), machine, {PIN: HOST_KEY}))
    assert in_force == {PIN: HOST_KEY}
    assert server.reads == 3 and server.objects[("ns", "m")]["metadata"]["annotations"] == {
        PIN: HOST_KEY
    }


def test_a_holder_that_is_gone_is_not_retried() -> None:
    rm = claimed({})
    rm["metadata"]["resourceVersion"] = "3"
    server = BusyServer(dict(rm, metadata={**rm["metadata"], "uid": "someone-else"}), conflicts=0)
    machine = Machine(rm, from_dict(RemoteMachineSpec, rm["spec"]), {}, Request("ns", "m"), LOG)
    with pytest.raises(Conflict, match="is gone"):
        asyncio.run(record_pins(cast(KubeClient, server), machine, {PIN: HOST_KEY}))
    assert server.reads == 1
