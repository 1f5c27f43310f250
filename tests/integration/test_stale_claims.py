"""Issue 13: a tenant's PooledRemoteMachine whose ``spec.claim`` names another namespace's
RemoteMachine (a Warning ``StaleClaimReleased`` Event), or a RemoteMachine UID that does not
exist (a Normal ``ClaimReleased``: what a claimant deleted before its first start leaves), is
released by the running controller, while a valid claim of the tenant's own machine stays."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from capi_remote.api import GROUP
from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.events import EVENTS
from tests.fixtures_provider import RunningController
from tests.fixtures_tenant import MakeTenant

pytestmark = pytest.mark.integration

POOLED = Resource(GROUP, "v1beta2", "pooledremotemachines", "PooledRemoteMachine")
MACHINES = Resource(GROUP, "v1beta2", "remotemachines", "RemoteMachine")
RELEASED = {("StaleClaimReleased", "Warning"), ("ClaimReleased", "Normal")}


def _pooled(namespace: str, name: str, address: str, claim: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1beta2",
        "kind": "PooledRemoteMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "pool": "workers",
            "machine": {"address": address, "sshKeyRef": {"name": "k"}},
            **({"claim": claim} if claim else {}),
        },
    }


async def _until(what: str, check: Any, within: float = 60.0) -> Any:
    for _ in range(int(within * 2)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_tenants_stale_claims_are_released_and_a_valid_one_stays(
    kube: KubeClient, controller: RunningController, make_tenant: MakeTenant
) -> None:
    victim, attacker = await make_tenant(), await make_tenant()
    victim_machine = await victim.kube.create(
        MACHINES,
        {
            "apiVersion": f"{GROUP}/v1beta2",
            "kind": "RemoteMachine",
            "metadata": {"name": "worker-0", "namespace": victim.namespace},
            "spec": {"address": "192.0.2.50", "sshKeyRef": {"name": "k"}},
        },
    )
    own = await attacker.kube.create(
        MACHINES,
        {
            "apiVersion": f"{GROUP}/v1beta2",
            "kind": "RemoteMachine",
            "metadata": {"name": "own-0", "namespace": attacker.namespace},
            "spec": {"pool": "workers"},
        },
    )
    ns = attacker.namespace
    claims = {
        "foreign": {
            "name": "worker-0",
            "namespace": victim.namespace,
            "uid": victim_machine["metadata"]["uid"],
        },
        "gone-uid": {"name": "own-0", "namespace": ns, "uid": "0000-no-such-uid"},
        "valid": {"name": "own-0", "namespace": ns, "uid": own["metadata"]["uid"]},
    }
    for index, (name, claim) in enumerate(claims.items()):
        if name == "gone-uid":  # claimed after its creation, as a machine claims a host
            await attacker.kube.create(POOLED, _pooled(ns, name, f"192.0.2.{60 + index}", {}))
            patch = {"spec": {"claim": claim}}
            await kube.patch(POOLED, ns, name, patch)  # the tenant may only create
        else:
            await attacker.kube.create(POOLED, _pooled(ns, name, f"192.0.2.{60 + index}", claim))

    async def released() -> bool:
        hosts = {h["metadata"]["name"]: h for h in (await kube.list(POOLED, ns))["items"]}
        return all(not hosts[name]["spec"].get("claim") for name in ("foreign", "gone-uid"))

    await _until("the stale claims to be released", released)
    valid = await kube.get(POOLED, ns, "valid")
    assert valid["spec"]["claim"] == claims["valid"]

    async def both_events() -> dict[str, str] | None:
        found = (await kube.list(EVENTS, ns))["items"]
        said = {
            e["involvedObject"]["name"]: e["message"]
            for e in found
            if (e.get("reason"), e.get("type")) in RELEASED
        }
        return said if {"foreign", "gone-uid"} <= said.keys() else None

    said = await _until("both release Events", both_events)
    assert "own namespace" in said["foreign"]
    assert "no longer exists" in said["gone-uid"]
    assert "valid" not in said
    victim_events = (await kube.list(EVENTS, victim.namespace))["items"]
    assert not [e for e in victim_events if e.get("reason") == "StaleClaimReleased"]
