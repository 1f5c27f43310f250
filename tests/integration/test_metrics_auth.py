"""/metrics against the real API server's TokenReview and SubjectAccessReview: no token is 401, a
ServiceAccount token without the right is 403, one bound to the shipped metrics-reader
ClusterRole gets the metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from capi_remote.kube.client import KubeClient
from capi_remote.kube.manager import Manager, ManagerSettings
from capi_remote_testbed.controlplane import ControlPlane
from tests.fixtures_tenant import service_account_token
from tests.unit.test_metrics_auth import scrape

pytestmark = pytest.mark.integration

READER_ROLE = Path(__file__).resolve().parents[2] / "manifests/rbac/metrics_reader_role.yaml"


@pytest.fixture
async def scrapers(control_plane: ControlPlane) -> AsyncIterator[tuple[str, str]]:
    """Tokens of two ServiceAccounts: one bound to the metrics-reader role, one not."""
    suffix = uuid.uuid4().hex[:8]
    namespace = f"scrape-{suffix}"
    control_plane.kubectl("create", "namespace", namespace)
    reader = yaml.safe_load(READER_ROLE.read_text())
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"metrics-reader-{suffix}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole"},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
    }
    binding["roleRef"]["name"] = reader["metadata"]["name"]  # type: ignore[index]
    accounts = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": n, "namespace": namespace},
        }
        for n in ("prometheus", "nosy")
    ]
    control_plane.apply([reader, binding, *accounts])
    try:
        yield (
            service_account_token(control_plane, namespace, "prometheus"),
            service_account_token(control_plane, namespace, "nosy"),
        )
    finally:
        control_plane.kubectl("delete", "clusterrolebinding", binding["metadata"]["name"])  # type: ignore[index]
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


async def test_metrics_need_a_token_with_the_right(
    kube: KubeClient, scrapers: tuple[str, str]
) -> None:
    allowed, denied = scrapers
    settings = ManagerSettings(health_address=None, metrics_address="127.0.0.1:0")
    manager = Manager(kube, settings)
    manager.metrics.for_queue("probe").added("x")
    async with manager._servers():
        host, port = manager.bound["metrics"]
        url = f"https://{host}:{port}/metrics"
        assert (await asyncio.to_thread(scrape, url))[0] == 401
        assert (await asyncio.to_thread(scrape, url, "not-a-token"))[0] == 401
        assert (await asyncio.to_thread(scrape, url, denied))[0] == 403
        status, body, _ = await asyncio.to_thread(scrape, url, allowed)
        assert status == 200 and 'workqueue_adds_total{name="probe"} 1.0' in body
