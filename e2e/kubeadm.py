"""The kubeadm flavour of the e2e bed: the shipped ClusterClass (``clusterclass-remote.yaml``) and
topology Cluster template, with what the test bed needs added, and the workload cluster they
create: a kube-apiserver (``capi_remote_testbed.workload``) whose CA is the ``<cluster>-ca`` the
kubeadm control-plane provider signs everything with.

These hosts have no kubeadm (``capi_remote_testbed.realcluster`` is the flavour with real nodes):
``kubeadm-shim.sh`` stands in for it (see its header), delivered as a
``files`` entry of the kubeadm configs, i.e. through the very cloud-config the kubeadm bootstrap
provider renders. etcd is configured as external (the test bed's etcd, which the workload API
server uses): with stacked etcd KCP would inspect etcd members through port-forwards to etcd Pods,
which need a kubelet.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capi_remote.kube.client import Resource
from capi_remote_testbed.clustertemplates import shipped_cluster_class
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.pki import CertificateAuthority, KeyPair
from capi_remote_testbed.realcluster import describe_objects
from capi_remote_testbed.workload import WorkloadApiServer
from e2e.bed import Bed

JSONDict = dict[str, Any]
SHIM = Path(__file__).with_name("kubeadm-shim.sh")

KUBEADM_CONTROL_PLANES = Resource(
    "controlplane.cluster.x-k8s.io", "v1beta2", "kubeadmcontrolplanes", "KubeadmControlPlane"
)
KUBEADM_CONFIGS = Resource(
    "bootstrap.cluster.x-k8s.io", "v1beta2", "kubeadmconfigs", "KubeadmConfig"
)
CLUSTER_CLASSES = Resource("cluster.x-k8s.io", "v1beta2", "clusterclasses", "ClusterClass")
PKI = "/etc/kubernetes/pki"
# Written on every host by the kubeadm configs; the controller renders the jinja.
INSTANCE_FILE = "/etc/capi-remote-e2e/instance"
INSTANCE_TEMPLATE = (
    "local_hostname={{ ds.meta_data.local_hostname }}\n"
    "v1_local_hostname={{ v1.local_hostname }}\n"
    "instance_id={{ ds.meta_data.instance_id }}\n"
)


def describe(bed: Bed, managers: RunningProviders) -> str:
    """What a failed wait prints: the Cluster API objects of the test's namespace, the managers'
    log tails."""
    return describe_objects(bed.plane.kubectl, bed.namespace) + "\n" + managers.log_tails()


def _files() -> list[JSONDict]:
    return [
        {
            "path": "/usr/local/bin/kubeadm",
            "owner": "root:root",
            "permissions": "0755",
            # Compressed: the API caps a file's content at 10 KiB (and this exercises gunzip).
            "encoding": "gzip+base64",
            "content": base64.b64encode(gzip.compress(SHIM.read_bytes(), mtime=0)).decode(),
        },
        {"path": INSTANCE_FILE, "permissions": "0644", "content": INSTANCE_TEMPLATE},
    ]


def cluster_class(namespace: str, etcd_endpoint: str) -> list[JSONDict]:
    """``clusterclass-remote.yaml`` as shipped, plus the shim and external etcd in its kubeadm
    templates."""
    documents = shipped_cluster_class(namespace)
    for document in documents:
        if document["kind"] == "KubeadmControlPlaneTemplate":
            spec = document["spec"]["template"]["spec"]["kubeadmConfigSpec"]
            spec["clusterConfiguration"] = {
                "etcd": {
                    "external": {
                        "endpoints": [etcd_endpoint],
                        "caFile": f"{PKI}/etcd/ca.crt",
                        "certFile": f"{PKI}/apiserver-etcd-client.crt",
                        "keyFile": f"{PKI}/apiserver-etcd-client.key",
                    }
                }
            }
            spec["files"] = _files()
        elif document["kind"] == "KubeadmConfigTemplate":
            spec = document["spec"]["template"]["spec"]
            spec["files"] = _files()
            # The other jinja spelling cloud-init offers for the same value.
            spec["joinConfiguration"]["nodeRegistration"]["name"] = "{{ v1.local_hostname }}"
    return documents


def _secret(cluster: str, namespace: str, purpose: str, pair: KeyPair | None = None, *,
            cert: bytes = b"", key: bytes = b"") -> JSONDict:  # fmt: skip
    data = {"tls.crt": pair.cert_pem if pair else cert}
    if (pair and pair.key_pem) or key:
        data["tls.key"] = pair.key_pem if pair else key
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "cluster.x-k8s.io/secret",
        "metadata": {
            "name": f"{cluster}-{purpose}",
            "namespace": namespace,
            "labels": {"cluster.x-k8s.io/cluster-name": cluster},
        },
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def cluster_secrets(
    cluster: str, namespace: str, ca: CertificateAuthority, etcd_ca: CertificateAuthority
) -> list[JSONDict]:
    """What a user provides so KCP uses this CA (``<cluster>-ca``, which it would otherwise
    generate) and the external etcd's CA and client certificate."""
    etcd_client = etcd_ca.issue("kube-apiserver-etcd-client", client=True)
    return [
        _secret(cluster, namespace, "ca", cert=ca.cert_pem, key=ca.key_pem),
        _secret(cluster, namespace, "etcd", cert=etcd_ca.cert_pem),
        _secret(cluster, namespace, "apiserver-etcd-client", etcd_client),
    ]


@contextlib.contextmanager
def workload_api_server(
    plane: ControlPlane, ca: CertificateAuthority, host: str
) -> Iterator[WorkloadApiServer]:
    """A workload API server for the duration of a test; with ``CAPI_REMOTE_KEEP_ENV=1`` its
    directory (log, kubeconfig) is kept, under the control plane's."""
    keep = bool(os.environ.get("CAPI_REMOTE_KEEP_ENV"))
    workdir = Path(tempfile.mkdtemp(prefix="workload-", dir=plane.workdir))
    server = WorkloadApiServer(
        plane.toolchain.kube_apiserver, plane.etcd_url, ca, host, workdir=workdir
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(keep_workdir=keep)
