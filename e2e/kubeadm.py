"""The kubeadm providers' side of the e2e bed: the shipped templates' location, the topology
Cluster rendered as clusterctl would, the kubeadm resources, and what a failed wait prints.
``e2e/realkubeadm.py`` adds what real nodes need to the shipped ClusterClass."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from capi_remote.kube.client import Resource
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.toolchain import KUBERNETES_VERSION
from e2e.bed import Bed

JSONDict = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "manifests" / "clusterctl" / "templates"

KUBEADM_CONTROL_PLANES = Resource(
    "controlplane.cluster.x-k8s.io", "v1beta2", "kubeadmcontrolplanes", "KubeadmControlPlane"
)
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::=([^}]*))?\}")


def describe(bed: Bed, managers: RunningProviders) -> str:
    """What a failed wait prints: the Cluster API objects of the test's namespace, the managers'
    log tails."""
    parts = []
    for kind in ("cluster", "kubeadmcontrolplane", "machine", "remotemachine"):
        try:
            parts.append(bed.plane.kubectl("describe", kind, "-n", bed.namespace))
        except Exception as error:  # a diagnosis must not hide the real failure
            parts.append(f"(describe {kind}: {error})")
    return "\n".join(parts) + "\n" + managers.log_tails()


def envsubst(text: str, variables: dict[str, str]) -> str:
    """clusterctl's ``${VAR}`` / ``${VAR:=default}`` substitution (unset without default: error)."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        if default is None:
            raise KeyError(f"template variable {name} is not set")
        return default

    return _VARIABLE.sub(value, text)


def topology_cluster(
    name: str,
    namespace: str,
    endpoint: tuple[str, int],
    *,
    control_plane_pool: str,
    worker_pool: str,
    workers: int,
) -> JSONDict:
    """``cluster-template-topology.yaml`` rendered as clusterctl would."""
    text = envsubst(
        (TEMPLATES / "cluster-template-topology.yaml").read_text(),
        {
            "CLUSTER_NAME": name,
            "NAMESPACE": namespace,
            "KUBERNETES_VERSION": KUBERNETES_VERSION,
            "WORKER_MACHINE_COUNT": str(workers),
            "REMOTE_CONTROL_PLANE_ENDPOINT_HOST": endpoint[0],
            "REMOTE_CONTROL_PLANE_ENDPOINT_PORT": str(endpoint[1]),
            "REMOTE_CONTROL_PLANE_POOL": control_plane_pool,
            "REMOTE_POOL": worker_pool,
        },
    )
    cluster: JSONDict = yaml.safe_load(text)
    return cluster
