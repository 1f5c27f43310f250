"""The shipped clusterctl templates (``manifests/clusterctl/templates``) rendered as clusterctl
renders them: ``${VAR}`` / ``${VAR:=default}`` substitution, documents parsed. The ClusterClass
``remote`` and the topology Cluster are what every ClusterClass flow of the test bed starts from
(the real cluster of ``capi-remote dev up``, the e2e flows), so they test what users get.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from capi_remote_testbed.image import REPO_ROOT
from capi_remote_testbed.toolchain import KUBERNETES_VERSION

JSONDict = dict[str, Any]
TEMPLATES = REPO_ROOT / "manifests" / "clusterctl" / "templates"
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::=([^}]*))?\}")


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


def shipped_cluster_class(namespace: str) -> list[JSONDict]:
    """``clusterclass-remote.yaml`` as shipped, in ``namespace``."""
    documents = list(yaml.safe_load_all((TEMPLATES / "clusterclass-remote.yaml").read_text()))
    for document in documents:
        document["metadata"]["namespace"] = namespace
    return documents


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
