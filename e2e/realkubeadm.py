"""The real-kubeadm flavour of the e2e bed: the shipped ClusterClass with what hosts prepared as
nodes (``HostFleet(nodes=True)``, docs/test-bed-hosts.md) need, expressed as a user would in the
KubeadmControlPlaneTemplate and KubeadmConfigTemplate. The bootstrap data stays CABPK's output.

What is added, and why:

- ``imageRepository`` and the etcd tag name the images made here (no registry is reachable).
- A kubelet configuration patch (a ``files`` entry, read through kubeadm's ``patches``): this VM
  runs cgroup v1, which kubelet 1.35 refuses unless ``failCgroupV1: false``; the kubelet uses the
  cgroupfs driver (no systemd) without QoS cgroups, and evicts nothing.
- ``imagePullPolicy: Never``: the images are preloaded (no registry is reachable), so kubeadm's
  ``ImagePull`` check, which would pull its upstream-tagged pause image, does not run.
- ``ignorePreflightErrors``: only ``SystemVerification`` (kubelet 1.35 on cgroup v1, which this
  VM runs: kubeadm fails it even with ``failCgroupV1: false``); docs/troubleshooting.md.
- ``skipPhases``: none (kube-proxy and CoreDNS run from images made here).
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

from capi_remote_testbed.kubeadmimages import ETCD_IMAGE_TAG, IMAGE_REPOSITORY
from capi_remote_testbed.node import KUBELET_ON_THIS_VM
from e2e.kubeadm import TEMPLATES

JSONDict = dict[str, Any]
PATCHES_DIR = "/etc/kubernetes/patches"
KUBELET_PATCH: JSONDict = dict(KUBELET_ON_THIS_VM)
SKIP_PHASES: list[str] = []
IGNORE_PREFLIGHT_ERRORS = ["SystemVerification"]


def _registration(name: str) -> JSONDict:
    return {
        "name": name,
        "criSocket": "unix:///run/containerd/containerd.sock",
        "ignorePreflightErrors": IGNORE_PREFLIGHT_ERRORS,
        "imagePullPolicy": "Never",
    }


def _files() -> list[JSONDict]:
    return [
        {
            "path": f"{PATCHES_DIR}/kubeletconfiguration+merge.yaml",
            "owner": "root:root",
            "permissions": "0644",
            "encoding": "base64",
            "content": base64.b64encode(yaml.safe_dump(KUBELET_PATCH).encode()).decode(),
        }
    ]


def cluster_class(namespace: str) -> list[JSONDict]:
    """``clusterclass-remote.yaml`` as shipped, plus the node settings above."""
    documents = list(yaml.safe_load_all((TEMPLATES / "clusterclass-remote.yaml").read_text()))
    for document in documents:
        document["metadata"]["namespace"] = namespace
        if document["kind"] == "KubeadmControlPlaneTemplate":
            spec = document["spec"]["template"]["spec"]["kubeadmConfigSpec"]
            spec["clusterConfiguration"] = {
                "imageRepository": IMAGE_REPOSITORY,
                "etcd": {"local": {"imageTag": ETCD_IMAGE_TAG}},
            }
            name = spec["initConfiguration"]["nodeRegistration"]["name"]
            spec["initConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
                "skipPhases": SKIP_PHASES,
            }
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = _files()
        elif document["kind"] == "KubeadmConfigTemplate":
            spec = document["spec"]["template"]["spec"]
            name = spec["joinConfiguration"]["nodeRegistration"]["name"]
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = _files()
    return documents
