"""e2e fixtures: a Bed per test = a namespace, a fleet of hosts, the hosts' route to the API
server, and the SSH credentials stored as a user would store them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote_testbed import clusterctlrepo, kubeadm_providers
from capi_remote_testbed import image as image_module
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.toolchain import ToolchainError
from e2e.bed import BedFactory, Cluster, bed_factory
from e2e.cluster import (
    WORKLOAD_SERVER_ENV,
    ExternalCluster,
    ExternalClusterError,
    external_kubeconfig,
)
from tests.fixtures_hosts import HostsFactory


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, toolchain: toolchain_module.Toolchain
) -> Iterator[Cluster]:
    """The local control plane, or the cluster CAPI_REMOTE_E2E_KUBECONFIG names (with Cluster
    API and the controller already running there: see docs/development.md)."""
    kubeconfig = external_kubeconfig()
    if kubeconfig is None:
        yield request.getfixturevalue("local_control_plane")
        return
    try:
        cluster = ExternalCluster.from_kubeconfig(
            kubeconfig, toolchain.kubectl, os.environ.get(WORKLOAD_SERVER_ENV) or None
        )
    except ExternalClusterError as error:
        pytest.fail(str(error))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def make_bed(
    request: pytest.FixtureRequest,
    kube: KubeClient,
    control_plane: Cluster,
    namespace: str,
    hosts: HostsFactory,
) -> AsyncIterator[BedFactory]:
    if not isinstance(control_plane, ExternalCluster):
        request.getfixturevalue("controller")  # ours, started locally; elsewhere it is deployed
    async with bed_factory(kube, control_plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        yield make


@pytest.fixture(scope="session")
def kubeadm_managers(control_plane: Cluster) -> Iterator[RunningProviders]:
    """The kubeadm bootstrap and control-plane providers (CABPK, KCP) next to CAPI core, built
    from the same Cluster API module (cached), for the flows that need a real control plane."""
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("runs the kubeadm providers and a workload API server on the local test bed")
    try:
        built = kubeadm_providers.ensure()
        running = kubeadm_providers.start(control_plane, built)
    except (ToolchainError, ControlPlaneError) as error:
        pytest.fail(str(error))
    try:
        yield running
    finally:
        running.stop()


#: The controller image the deploy e2e (kustomize, clusterctl, operator) import into their nodes.
CONTROLLER_IMAGE_NAME, CONTROLLER_IMAGE_TAG = "localhost/capi-remote", "e2e-deploy"


@pytest.fixture(scope="session")
def controller_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make image`, then what docs/deployment.md says: saved for a node's ``ctr images import``
    (built once per session). Skips where podman cannot run."""
    if image_module.podman("info", check=False).returncode != 0:
        pytest.skip("podman cannot run here (`make system-deps` installs podman and runc)")
    return image_module.saved_image(
        f"{CONTROLLER_IMAGE_NAME}:{CONTROLLER_IMAGE_TAG}",
        tmp_path_factory.mktemp("image") / "capi-remote.tar",
    )


@pytest.fixture(scope="session")
def clusterctl_repository(
    toolchain: toolchain_module.Toolchain, tmp_path_factory: pytest.TempPathFactory
) -> clusterctlrepo.Repository:
    """The clusterctl local repository (Cluster API core, kubeadm providers, our
    ``make release-manifests``) naming the controller image, written once per session for the
    clusterctl and operator e2e."""
    return clusterctlrepo.write_repository(
        tmp_path_factory.mktemp("clusterctl") / "repository",
        Path(__file__).resolve().parents[1],
        toolchain.kubectl,
        {"repository": CONTROLLER_IMAGE_NAME.rsplit("/", 1)[0], "tag": CONTROLLER_IMAGE_TAG},
    )
