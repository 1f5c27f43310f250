"""Issue 13 points 3 and 5, performed as a namespace tenant (tests/fixtures_tenant.py) against
the real controller: a RemoteMachine cannot send a Secret of the namespace to a host whose key
is unverified, nor turn provisionJob into a Pod with another service account or Secret volumes;
both fail with a clear reason, and the tenant's other machine still provisions."""

from __future__ import annotations

import pytest

from capi_remote.resources import JOBS, REMOTE_MACHINES, SECRETS
from capi_remote_testbed import samples
from e2e.bed import Bed, BedFactory, workload_kubeconfig
from e2e.test_tenant_attacks import _as_tenant, _phase, _tenant_cluster, _tenant_machine
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL
from tests.fixtures_tenant import MakeTenant

pytestmark = pytest.mark.integration

LOOT = "db-password-never-sent"


async def _reason(bed: Bed, name: str, reason: str) -> dict[str, str]:
    async def check() -> dict[str, str]:
        ready = await bed.condition(REMOTE_MACHINES, name, "Ready")
        return ready if ready.get("reason") == reason else {}

    return dict(
        await bed.wait_for(
            f"{name} {reason}", check, 120, lambda: bed.describe("remotemachine", name)
        )
    )


async def test_secret_refs_and_pod_grants_are_refused_and_others_provision(
    make_bed: BedFactory, make_tenant: MakeTenant
) -> None:
    bed = await make_bed(2)
    tenant = await make_tenant(namespace=bed.namespace)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": bed.namespace},
        "stringData": {"password": LOOT},
    }
    await bed.kube.create(SECRETS, secret)  # another team's Secret in the shared namespace
    await _tenant_cluster(bed, tenant, "t2", workload_kubeconfig(bed.plane))
    data = bed.registration_script()
    host = bed.fleet.hosts[0]
    attacks = {
        "exfil-0": bed.host_spec(
            host,
            passwordRef={"name": "db", "key": "password"},
            hostKeyPolicy={"insecureSkipVerification": True},
        ),
        "podgrant-0": bed.host_spec(
            host,
            provisionJob={
                "jobSpecTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "serviceAccountName": "controller-like",
                                "automountServiceAccountToken": True,
                                "volumes": [{"name": "loot", "secret": {"secretName": "db"}}],
                                "containers": [{"name": "provision", "image": "any"}],
                            }
                        }
                    }
                }
            },
        ),
    }
    for name, spec in attacks.items():
        await _as_tenant(tenant, samples.bootstrap_secret(f"{name}-data", bed.namespace, data))
        await _as_tenant(tenant, samples.remote_machine(name, bed.namespace, spec))
        await _as_tenant(tenant, samples.machine(name, bed.namespace, "t2", f"{name}-data"))
    await _tenant_machine(bed, tenant, "fine-0", "t2", data, 1)

    exfil = await _reason(bed, "exfil-0", "UnverifiedHostForSecret")
    assert "passwordRef" in exfil["message"] and LOOT not in exfil["message"]
    grant = await _reason(bed, "podgrant-0", "ProvisioningJobInvalid")
    refused = ("serviceAccountName", "automountServiceAccountToken", "volumes")
    assert any(f"spec.template.spec.{field} " in grant["message"] for field in refused), grant
    rm = await bed.get(REMOTE_MACHINES, "podgrant-0") or {}
    uid = rm["metadata"]["uid"]
    assert not await bed.list(JOBS, label_selector=f"{MACHINE_UID_LABEL}={uid}")
    await _phase(bed, "fine-0", "Provisioned")
