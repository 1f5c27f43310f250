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
- No ``skipPhases``: kube-proxy and CoreDNS run from images made here. kube-proxy gets a
  KubeProxyConfiguration with ``conntrack.maxPerCore: 0`` (keep the kernel's ``nf_conntrack_max``:
  a host's network namespace may not write it, and kube-proxy would exit on the attempt). CABPK
  has no field for it: a ``files`` entry holds the document and a ``preKubeadmCommands`` line
  appends it to the config CABPK wrote for ``kubeadm init``, as CAPI users do.
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
IGNORE_PREFLIGHT_ERRORS = ["SystemVerification"]
INIT_CONFIG = "/run/kubeadm/kubeadm.yaml"  # where CABPK writes kubeadm init's configuration
KUBE_PROXY_CONFIG = "/etc/kubernetes/kube-proxy-config.yaml"
KUBE_PROXY: JSONDict = {
    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
    "kind": "KubeProxyConfiguration",
    "conntrack": {"maxPerCore": 0},
}


def _registration(name: str) -> JSONDict:
    return {
        "name": name,
        "criSocket": "unix:///run/containerd/containerd.sock",
        "ignorePreflightErrors": IGNORE_PREFLIGHT_ERRORS,
        "imagePullPolicy": "Never",
    }


def _file(path: str, content: str) -> JSONDict:
    return {
        "path": path,
        "owner": "root:root",
        "permissions": "0644",
        "encoding": "base64",
        "content": base64.b64encode(content.encode()).decode(),
    }


def _files() -> list[JSONDict]:
    return [_file(f"{PATCHES_DIR}/kubeletconfiguration+merge.yaml", yaml.safe_dump(KUBELET_PATCH))]


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
            }
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = [
                *_files(),
                _file(KUBE_PROXY_CONFIG, "\n" + yaml.safe_dump(KUBE_PROXY, explicit_start=True)),
            ]
            # Only ``kubeadm init`` reads it (kube-proxy's configuration is the cluster's).
            spec["preKubeadmCommands"] = [
                f"if [ -f {INIT_CONFIG} ]; then cat {KUBE_PROXY_CONFIG} >> {INIT_CONFIG}; fi"
            ]
        elif document["kind"] == "KubeadmConfigTemplate":
            spec = document["spec"]["template"]["spec"]
            name = spec["joinConfiguration"]["nodeRegistration"]["name"]
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = _files()
    return documents
