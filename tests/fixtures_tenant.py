"""A namespace tenant for attack tests: a ServiceAccount with exactly the rights of issue 13's
tenant, as a KubeClient that authenticates with its own token (TokenRequest API), never as
system:masters.

The tenant may create, get, list, watch, update and delete Clusters, Machines, RemoteMachines,
PooledRemoteMachines, RemoteMachineTemplates and Secrets in its one namespace, and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from kubernetes_asyncio import client as k8s_client

from capi_remote.kube.client import KubeClient, Resource
from capi_remote_testbed.controlplane import ControlPlane

TENANT_VERBS = ["create", "get", "list", "watch", "update", "delete"]
TENANT_RULES = [
    {"apiGroups": ["cluster.x-k8s.io"], "resources": ["clusters", "machines"]},
    {
        "apiGroups": ["infrastructure.cluster.x-k8s.io"],
        "resources": ["remotemachines", "pooledremotemachines", "remotemachinetemplates"],
    },
    {"apiGroups": [""], "resources": ["secrets"]},
]
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)


@attrs.frozen
class Tenant:
    namespace: str
    user: str  # system:serviceaccount:<namespace>:<name>
    token: str
    kube: KubeClient


def tenant_documents(namespace: str, name: str = "tenant") -> list[dict[str, Any]]:
    """The tenant's ServiceAccount, Role and RoleBinding in ``namespace``."""
    rules = [{**rule, "verbs": TENANT_VERBS} for rule in TENANT_RULES]
    meta = {"name": name, "namespace": namespace}
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": rbac, "kind": "Role", "metadata": meta, "rules": rules},
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def token_client(plane: ControlPlane, token: str) -> KubeClient:
    """A client of the local control plane that sends only ``token`` (CA-verified TLS)."""
    configuration = k8s_client.Configuration(host=plane.server)
    configuration.ssl_ca_cert = str(plane.workdir / "pki" / "ca.crt")
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return KubeClient.for_configuration(configuration)


def service_account_token(plane: ControlPlane, namespace: str, name: str) -> str:
    """A bound token for the ServiceAccount, from the TokenRequest API."""
    return plane.kubectl("create", "token", name, "-n", namespace, "--duration=1h").strip()


MakeTenant = Callable[..., Awaitable[Tenant]]


@pytest.fixture
async def make_tenant(control_plane: ControlPlane) -> AsyncIterator[MakeTenant]:
    """``await make_tenant()``: a tenant in a fresh namespace (removed afterwards), or with
    ``namespace=`` in an existing one (e.g. an e2e bed's, whose shared objects an admin made)."""
    made: list[Tenant] = []
    created: list[str] = []

    async def make(namespace: str | None = None) -> Tenant:
        if namespace is None:
            namespace = f"tenant-{uuid.uuid4().hex[:8]}"
            control_plane.kubectl("create", "namespace", namespace)
            created.append(namespace)
        control_plane.apply(tenant_documents(namespace))
        token = service_account_token(control_plane, namespace, "tenant")
        tenant = Tenant(
            namespace,
            f"system:serviceaccount:{namespace}:tenant",
            token,
            token_client(control_plane, token),
        )
        made.append(tenant)
        return tenant

    yield make
    for tenant in made:
        await tenant.kube.close()
    for namespace in created:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
async def tenant(make_tenant: MakeTenant) -> Tenant:
    return await make_tenant()
