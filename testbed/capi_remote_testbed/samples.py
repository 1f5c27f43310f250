"""Cluster API objects for the local environment and the e2e suite, wired to namespaced hosts.

The "workload cluster" of a local Cluster is the management API server itself: the
``<cluster>-kubeconfig`` Secret points there, and each host's bootstrap script registers a Node in
it (through a TCP proxy on the hosts' bridge, their only route out) carrying the providerID the
controller substitutes for ``PROVIDER_ID``. Cluster API core then links Node and Machine as in a
real cluster, and Machines reach phase Running.
"""

from __future__ import annotations

import base64
import json
import shlex
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capi_remote.api import GROUP
from capi_remote.kube.client import Resource
from capi_remote.resources import (
    CAPI_GROUP,
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINE_TEMPLATES,
    REMOTE_MACHINES,
    SECRETS,
)

JSONDict = dict[str, Any]
CAPI_API = "cluster.x-k8s.io/v1beta2"
INFRA_API = f"{GROUP}/v1beta2"
SSH_KEY_SECRET = "ssh-key"
KNOWN_HOSTS = "known-hosts"
DEPLOYMENT_LABEL = "e2e.capi-remote.dev/deployment"
MACHINE_DEPLOYMENTS = Resource(CAPI_GROUP, "v1beta2", "machinedeployments", "MachineDeployment")
#: The resource of each kind these samples make, for a generic create.
RESOURCES = {
    r.kind: r
    for r in (
        CLUSTERS,
        CONFIGMAPS,
        MACHINES,
        MACHINE_DEPLOYMENTS,
        POOLED_REMOTE_MACHINES,
        REMOTE_CLUSTERS,
        REMOTE_MACHINE_TEMPLATES,
        REMOTE_MACHINES,
        SECRETS,
    )
}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def node_registration_script(
    api_port: int,
    gateway: str,
    pki: Path,
    *,
    with_provider_id: bool = True,
    labels: dict[str, str] | None = None,
    fleets: Mapping[str, int] | None = None,
    work: Sequence[str] = (),
) -> str:
    """A kubeadm-style cloud-config (jinja header) that registers this host as a Node, with the
    ``PROVIDER_ID`` placeholder as its providerID (or none, as a kubelet without cloud provider
    would, leaving the link to the controller).

    ``fleets`` (a fleet's gateway -> the API proxy's port on it) makes one script serve hosts of
    several fleets: each host reaches the proxy on its own /24's gateway (``api_port`` and
    ``gateway`` are then unused). ``work`` are commands run before the registration."""
    node = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "{{ ds.meta_data.local_hostname }}", "labels": labels or {}},
            "spec": {"providerID": "PROVIDER_ID"} if with_provider_id else {},
        }
    )

    def file(path: str, content: str, mode: str = "0644") -> str:
        body = textwrap.indent(content.rstrip("\n") + "\n", "      ")
        return f"- path: {path}\n  permissions: '{mode}'\n  content: |\n{body}"

    port, address, pick = str(api_port), gateway, ""
    if fleets is not None:
        # shlex leaves these words unquoted, so the shell expands them.
        port, address = "${port}", "${gw}"
        cases = "".join(f"{g}) port={p} ;; " for g, p in fleets.items())
        pick = (
            "a=$(ip -4 -o addr show eth0 | awk '{print $4}'); a=${a%/*}; gw=${a%.*}.1;"
            f" case $gw in {cases}*) echo no API proxy for $gw >&2; exit 1 ;; esac; "
        )
    curl = [
        "curl", "-sS", "-o", "/var/tmp/e2e-register.json", "-w", "%{http_code}",
        "--cacert", "/etc/e2e/ca.crt",
        "--cert", "/etc/e2e/client.crt", "--key", "/etc/e2e/client.key",
        "--resolve", f"localhost:{port}:{address}",
        "-H", "Content-Type: application/json", "-X", "POST",
        "--data-binary", "@/etc/e2e/node.json",
        f"https://localhost:{port}/api/v1/nodes",
    ]  # fmt: skip
    joined = shlex.join(curl).replace("'localhost:${port}:${gw}'", "localhost:${port}:${gw}")
    joined = joined.replace(
        "'https://localhost:${port}/api/v1/nodes'", "https://localhost:${port}/api/v1/nodes"
    )
    # Idempotent, as a kubelet's registration is: 409 means an earlier try created the Node and
    # lost the answer (e.g. the API server restarted in between), so a retry must not fail on it.
    register = (
        f"{pick}code=$({joined}) || exit 1; case $code in 201|409) ;; *) echo HTTP $code >&2;"
        " cat /var/tmp/e2e-register.json >&2; exit 1 ;; esac"
    )
    files = "\n".join(
        [
            file("/etc/e2e/ca.crt", (pki / "ca.crt").read_text()),
            file("/etc/e2e/client.crt", (pki / "admin.crt").read_text()),
            file("/etc/e2e/client.key", (pki / "admin.key").read_text(), "0600"),
            file("/etc/e2e/node.json", node),
        ]
    )
    return (
        "## template: jinja\n#cloud-config\nwrite_files:\n"
        + files
        + "\nruncmd:\n"
        + "".join(f"- {json.dumps(command)}\n" for command in work)
        + f"- {json.dumps(register)}\n"
        + "- mkdir -p /run/cluster-api\n"
        + "- touch /run/cluster-api/bootstrap-success.complete\n"
    )


def credentials(namespace: str, private_key: str, known_hosts: str) -> list[JSONDict]:
    """The SSH key Secret and known_hosts ConfigMap, as a user would store them."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SSH_KEY_SECRET, "namespace": namespace},
            "data": {"value": b64(private_key)},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": KNOWN_HOSTS, "namespace": namespace},
            "data": {"known_hosts": known_hosts},
        },
    ]


def host_spec(address: str, port: int = 22, **overrides: Any) -> JSONDict:
    spec: JSONDict = {
        "address": address,
        "port": port,
        "user": "root",
        "sshKeyRef": {"name": SSH_KEY_SECRET},
        "hostKeyPolicy": {"knownHostsRef": {"kind": "ConfigMap", "name": KNOWN_HOSTS}},
    }
    spec.update(overrides)
    return spec


def cluster(name: str, namespace: str, kubeconfig: bytes) -> list[JSONDict]:
    """RemoteCluster + Cluster + the workload kubeconfig Secret CAPI reads Nodes through."""
    return [
        {
            "apiVersion": INFRA_API,
            "kind": "RemoteCluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {},
        },
        {
            "apiVersion": CAPI_API,
            "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "infrastructureRef": {"apiGroup": GROUP, "kind": "RemoteCluster", "name": name}
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "cluster.x-k8s.io/secret",
            "metadata": {
                "name": f"{name}-kubeconfig",
                "namespace": namespace,
                "labels": {"cluster.x-k8s.io/cluster-name": name},
            },
            "data": {"value": b64(kubeconfig)},
        },
    ]


def bootstrap_secret(name: str, namespace: str, script: str) -> JSONDict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "cluster.x-k8s.io/secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"value": b64(script), "format": b64("cloud-config")},
    }


def remote_machine(name: str, namespace: str, spec: JSONDict) -> JSONDict:
    return {
        "apiVersion": INFRA_API,
        "kind": "RemoteMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def machine(
    name: str, namespace: str, cluster_name: str, data_secret: str, *, control_plane: bool = True
) -> JSONDict:
    labels = {"cluster.x-k8s.io/cluster-name": cluster_name}
    if control_plane:
        labels["cluster.x-k8s.io/control-plane"] = ""
    return {
        "apiVersion": CAPI_API,
        "kind": "Machine",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "clusterName": cluster_name,
            "bootstrap": {"dataSecretName": data_secret},
            "infrastructureRef": {"apiGroup": GROUP, "kind": "RemoteMachine", "name": name},
        },
    }


def pooled(name: str, namespace: str, pool: str, spec: JSONDict) -> JSONDict:
    return {
        "apiVersion": INFRA_API,
        "kind": "PooledRemoteMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"pool": pool, "machine": spec},
    }


def machine_template(name: str, namespace: str, pool: str) -> JSONDict:
    return {
        "apiVersion": INFRA_API,
        "kind": "RemoteMachineTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"pool": pool}}},
    }


def machine_deployment(
    name: str, namespace: str, cluster_name: str, data_secret: str, template: str, replicas: int
) -> JSONDict:
    selector = {DEPLOYMENT_LABEL: name}
    return {
        "apiVersion": CAPI_API,
        "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterName": cluster_name,
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "clusterName": cluster_name,
                    "bootstrap": {"dataSecretName": data_secret},
                    "infrastructureRef": {
                        "apiGroup": GROUP,
                        "kind": "RemoteMachineTemplate",
                        "name": template,
                    },
                },
            },
        },
    }
