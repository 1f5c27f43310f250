"""Issue 13, point 6: an object written as v1beta1 gets the same validation as v1beta2. A tenant
(its own namespace's rights only) creates RemoteMachines and PooledRemoteMachines with an invalid
address, port or host-key policy, and RemoteMachineTemplates with an invalid pool, in both
versions: every one is refused with the v1beta2 CEL or OpenAPI message, and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest

from capi_remote.api import GROUP
from capi_remote.kube.client import ApiError, Resource
from tests.fixtures_provider import RunningController
from tests.fixtures_tenant import Tenant

pytestmark = pytest.mark.integration

PLURALS = {
    "RemoteMachine": "remotemachines",
    "PooledRemoteMachine": "pooledremotemachines",
    "RemoteMachineTemplate": "remotemachinetemplates",
}
BAD_HOSTS: dict[str, tuple[dict[str, Any], str]] = {
    "server-name": ({"address": "<server-name>"}, "address must be an IPv4/IPv6 address"),
    "bad-ip": ({"address": "999.1.1.1"}, "address must be an IPv4/IPv6 address"),
    "port": ({"port": 70000}, "should be less than or equal to 65535"),
    "two-policies": (
        {"hostKeyPolicy": {"trustOnFirstUse": True, "insecureSkipVerification": True}},
        "hostKeyPolicy",
    ),
}


BAD_TEMPLATES: dict[str, tuple[dict[str, Any], str]] = {
    "pool-too-long": ({"pool": "p" * 254}, "may not be more than 253"),
    "no-pool": ({"pool": None}, "spec.template.spec.pool: Required value"),
}


def _object(kind: str, version: str, namespace: str, host: dict[str, Any]) -> dict[str, Any]:
    machine = {"address": "10.0.0.5", "sshKeyRef": {"name": "key"}, **host}
    template = {k: v for k, v in {"pool": "workers", **host}.items() if v is not None}
    spec: dict[str, Any] = {
        "RemoteMachine": machine,
        "PooledRemoteMachine": {"pool": "workers", "machine": machine},
        "RemoteMachineTemplate": {"template": {"spec": template}},
    }[kind]
    return {
        "apiVersion": f"{GROUP}/{version}",
        "kind": kind,
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }


CASES = [
    *((kind, bad, *BAD_HOSTS[bad]) for kind in ("RemoteMachine", "PooledRemoteMachine")
      for bad in sorted(BAD_HOSTS)),
    *(("RemoteMachineTemplate", bad, *BAD_TEMPLATES[bad]) for bad in sorted(BAD_TEMPLATES)),
]  # fmt: skip


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
@pytest.mark.parametrize(
    ("kind", "bad", "host", "message"), CASES, ids=[f"{k}-{b}" for k, b, _, _ in CASES]
)
async def test_a_tenant_cannot_store_an_invalid_object_in_either_version(
    tenant: Tenant,
    controller: RunningController,
    kind: str,
    bad: str,
    host: dict[str, Any],
    message: str,
    version: str,
) -> None:
    resource = Resource(GROUP, version, PLURALS[kind], kind)
    with pytest.raises(ApiError) as raised:
        await tenant.kube.create(resource, _object(kind, version, tenant.namespace, host))
    assert raised.value.status == 422, raised.value.message
    assert message in raised.value.message
    listed = await tenant.kube.list(resource, tenant.namespace)
    assert listed.get("items") == []


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
async def test_the_same_object_with_a_valid_host_is_stored(
    tenant: Tenant, controller: RunningController, version: str
) -> None:
    """The refusals above are the rules', not the tenant's rights."""
    resource = Resource(GROUP, version, PLURALS["RemoteMachine"], "RemoteMachine")
    await tenant.kube.create(resource, _object("RemoteMachine", version, tenant.namespace, {}))
