"""The release assets installed by the Cluster API Operator for real, the way docs/deployment.md
tells a user: the operator (built from ``sigs.k8s.io/cluster-api-operator``, its release
components made from the module's ``config/``) running as a Pod; Cluster API core and capi-remote
each from ConfigMaps holding their release assets (``metadata`` and ``components``, the core's
gzipped as the operator documents for assets over a ConfigMap's 1 MiB), selected by a
``CoreProvider`` and an ``InfrastructureProvider``'s ``spec.fetchConfig.selector``. The operator
installs both, their Deployments become Available, each provider's status shows its installed
version and Ready, and a Cluster with a RemoteMachine provisions a host from that installation.

Our release assets come from ``make release-manifests`` and Cluster API core's from the test bed's
local repository (:mod:`capi_remote_testbed.clusterctlrepo`); cert-manager runs as processes
(:mod:`capi_remote_testbed.incluster`). No bootstrap or control-plane provider: the Machine names
its bootstrap data Secret. Slow: the image build, ~1.5 min of start-up.
"""

from __future__ import annotations

import functools
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.resources import REMOTE_MACHINES
from capi_remote_testbed import capioperator, clusterctlrepo
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.incluster import management_cluster
from e2e.bed import bed_factory
from e2e.conftest import CONTROLLER_IMAGE_NAME as IMAGE_NAME
from e2e.conftest import CONTROLLER_IMAGE_TAG as IMAGE_TAG
from tests.fixtures_hosts import HostsFactory
from tests.support.waits import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATOR_API = "operator.cluster.x-k8s.io/v1alpha2"
LABEL = "provider.cluster.x-k8s.io/"
CORE_NAMESPACE = "capi-system"
SYSTEM = "capi-remote-system"


@attrs.frozen
class Provider:
    """A provider as the operator knows it, and the Deployment its components hold."""

    kind: str
    name: str
    type: str  # the operator's type label value
    namespace: str
    deployment: str


CORE = Provider("CoreProvider", "cluster-api", "core", CORE_NAMESPACE, "capi-controller-manager")
OURS = Provider(
    "InfrastructureProvider", "remote", "infrastructure", SYSTEM, "capi-remote-controller-manager"
)


@attrs.frozen
class Operated:
    plane: ControlPlane
    version: str  # our release's version

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        return self.plane.kubectl(*args, input_text=input_text)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def available(self, namespace: str, deployment: str) -> bool:
        status = self.get("deployment", "-n", namespace, deployment).get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return conditions.get("Available") == "True"

    def provider(self, provider: Provider) -> dict[str, Any]:
        found: dict[str, Any] = self.get(
            f"{provider.kind.lower()}s.operator.cluster.x-k8s.io",
            "-n", provider.namespace, provider.name,
        )  # fmt: skip
        return found

    def diagnose(self) -> str:
        logs = self.kubectl(
            "logs", "-n", capioperator.NAMESPACE, f"deployment/{capioperator.DEPLOYMENT}",
            "--tail=60",
        )  # fmt: skip
        return (
            self.kubectl("get", "pods", "-A", "-o", "wide")
            + self.kubectl("get", "coreproviders,infrastructureproviders", "-A", "-o", "yaml")
            + logs
        )


def provider_configmap(
    operated: Operated,
    provider: Provider,
    version: str,
    assets: Path,
    components: str,
    work: Path,
) -> None:
    """What docs/deployment.md has the admin run: a ConfigMap of the release's ``metadata.yaml``
    and components file (gzipped and annotated when over ConfigMap's 1 MiB), labelled with the
    provider's name, type and version."""
    name, kind, namespace = provider.name, provider.type, provider.namespace
    configmap = f"{kind}-{name}-{version}"
    source = assets / components
    compressed = source.stat().st_size > 1_000_000  # a ConfigMap holds at most 1 MiB
    if compressed:
        source = work / f"{components}.gz"
        source.write_bytes(gzip.compress((assets / components).read_bytes()))
    operated.kubectl(
        "create", "configmap", configmap, "-n", namespace,
        f"--from-file=components={source}", f"--from-file=metadata={assets / 'metadata.yaml'}",
    )  # fmt: skip
    if compressed:
        operated.kubectl(
            "annotate", "configmap", configmap, "-n", namespace, f"{LABEL}compressed=true"
        )
    operated.kubectl(
        "label", "configmap", configmap, "-n", namespace,
        f"{LABEL}name={name}", f"{LABEL}type={kind}", f"{LABEL}version={version}",
    )  # fmt: skip


def provider_object(provider: Provider, version: str, image: str) -> dict[str, Any]:
    """The operator's provider object: the version to install, the ConfigMaps it comes from and
    the image its manager runs."""
    labels = {f"{LABEL}name": provider.name, f"{LABEL}type": provider.type}
    return {
        "apiVersion": OPERATOR_API,
        "kind": provider.kind,
        "metadata": {"name": provider.name, "namespace": provider.namespace},
        "spec": {
            "version": version,
            "fetchConfig": {"selector": {"matchLabels": labels}},
            "deployment": {"containers": [{"name": "manager", "imageUrl": image}]},
        },
    }


def installed(operated: Operated, provider: Provider, version: str) -> bool:
    status = operated.provider(provider).get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return (
        status.get("installedVersion") == version
        and conditions.get("Ready") == "True"
        and operated.available(provider.namespace, provider.deployment)
    )


@pytest.fixture(scope="module")
def operated(
    toolchain: toolchain_module.Toolchain,
    tmp_path_factory: pytest.TempPathFactory,
    clusterctl_repository: clusterctlrepo.Repository,
    controller_image: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Operated]:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("operator")
    repository = clusterctl_repository
    operator = capioperator.ensure(toolchain.kubectl)
    images = [controller_image, repository.images, operator.images]
    with management_cluster(toolchain, images, cluster_api=False) as cluster:
        version = repository.infrastructure.name
        operated = Operated(cluster.plane, version)
        operated.kubectl("apply", "--server-side", "-f", "-", input_text=operator.components)
        eventually(
            "the operator's Deployment Available",
            lambda: operated.available(capioperator.NAMESPACE, capioperator.DEPLOYMENT),
            180,
            lambda: operated.kubectl("get", "pods", "-A", "-o", "wide"),
        )
        capi = toolchain_module.CLUSTER_API_VERSION
        core_assets = repository.config.parent / clusterctlrepo.CORE.label / capi
        for provider, release, assets, components, image in (
            (CORE, capi, core_assets, clusterctlrepo.CORE.components,
             clusterctlrepo.image_ref(clusterctlrepo.CORE)),
            (OURS, version, repository.infrastructure, "infrastructure-components.yaml",
             f"{IMAGE_NAME}:{IMAGE_TAG}"),
        ):  # fmt: skip
            operated.kubectl("create", "namespace", provider.namespace)
            provider_configmap(operated, provider, release, assets, components, work)
            operated.plane.apply([provider_object(provider, release, image)])
        for provider, release in ((CORE, capi), (OURS, version)):
            eventually(
                f"the operator to install {provider.kind} {provider.name} {release}",
                functools.partial(installed, operated, provider, release),
                300,
                operated.diagnose,
            )
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"operator e2e: installed in {time.monotonic() - started:.0f} s")
        yield operated
        if reporter is not None:
            reporter.write_line(f"operator e2e: {time.monotonic() - started:.0f} s in all")


@pytest.fixture(scope="module")
def control_plane(operated: Operated) -> ControlPlane:
    """This module's management cluster, for the shared fixtures (``kube``)."""
    return operated.plane


def test_the_operator_installs_capi_remote_from_configmaps(operated: Operated) -> None:
    ours = operated.provider(OURS)
    assert ours["status"]["installedVersion"] == operated.version
    conditions = {c["type"]: c for c in ours["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True", conditions
    assert conditions["ProviderInstalled"]["status"] == "True", conditions
    pods = [
        p
        for p in operated.get("pods", "-n", SYSTEM)["items"]
        if p["status"].get("phase") == "Running"
    ]
    assert [p["spec"]["containers"][0]["image"] for p in pods] == [f"{IMAGE_NAME}:{IMAGE_TAG}"]
    crd = operated.get("crd", "remotemachines.infrastructure.cluster.x-k8s.io")
    assert crd["metadata"]["labels"]["cluster.x-k8s.io/provider"] == "infrastructure-remote"


async def test_a_cluster_provisions_from_the_operators_installation(
    operated: Operated, kube: KubeClient, hosts: HostsFactory
) -> None:
    namespace = "t-operator"
    operated.kubectl("create", "namespace", namespace)
    async with bed_factory(kube, operated.plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        bed = await make(1)
        (host,) = bed.fleet.hosts
        await bed.cluster("op")
        data = await bed.bootstrap_secret("op-bootstrap")
        await bed.remote_machine("op-0", bed.host_spec(host))
        await bed.machine("op-0", "op", data)

        async def provisioned() -> bool:
            rm = await bed.get(REMOTE_MACHINES, "op-0") or {}
            return bool(((rm.get("status") or {}).get("initialization") or {}).get("provisioned"))

        await bed.wait_for(
            "RemoteMachine op-0 provisioned by the operator-installed controller",
            provisioned,
            180,
            diagnose=lambda: bed.describe("remotemachine", "op-0") + operated.diagnose(),
        )
        done = host.exec_inside(["test", "-f", "/run/cluster-api/bootstrap-success.complete"])
        assert done.returncode == 0
