"""The kubeadm flavour's pieces that need no test bed: the rendered ClusterClass and Cluster, and
the kubeadm stand-in they carry."""

from __future__ import annotations

import base64
import gzip
import subprocess

import pytest

from capi_remote_testbed import clustertemplates
from e2e import kubeadm


def test_envsubst_follows_clusterctl() -> None:
    assert clustertemplates.envsubst("${A}-${B:=two}", {"A": "one"}) == "one-two"
    assert clustertemplates.envsubst("${B:=two}", {"B": "three"}) == "three"
    with pytest.raises(KeyError, match="C"):
        clustertemplates.envsubst("${C}", {})


def test_cluster_class_is_the_shipped_one_plus_the_shim_and_external_etcd() -> None:
    documents = {d["kind"]: d for d in kubeadm.cluster_class("ns", "http://127.0.0.1:2379")}
    assert set(documents) == {
        "ClusterClass", "RemoteClusterTemplate", "KubeadmControlPlaneTemplate",
        "RemoteMachineTemplate", "KubeadmConfigTemplate",
    }  # fmt: skip
    assert all(d["metadata"]["namespace"] == "ns" for d in documents.values())
    kcp = documents["KubeadmControlPlaneTemplate"]["spec"]["template"]["spec"]["kubeadmConfigSpec"]
    assert kcp["clusterConfiguration"]["etcd"]["external"]["endpoints"] == ["http://127.0.0.1:2379"]
    worker = documents["KubeadmConfigTemplate"]["spec"]["template"]["spec"]
    for files in (kcp["files"], worker["files"]):
        shim = next(f for f in files if f["path"] == "/usr/local/bin/kubeadm")
        assert len(shim["content"]) <= 10240  # the CRDs' limit
        assert gzip.decompress(base64.b64decode(shim["content"])) == kubeadm.SHIM.read_bytes()
        assert any("{{ v1.local_hostname }}" in f["content"] for f in files)


def test_topology_cluster_renders_every_variable() -> None:
    cluster = clustertemplates.topology_cluster(
        "c", "ns", ("10.0.0.1", 6443), control_plane_pool="cp", worker_pool="w", workers=2
    )
    topology = cluster["spec"]["topology"]
    assert topology["workers"]["machineDeployments"][0]["replicas"] == 2
    variables = {v["name"]: v["value"] for v in topology["variables"]}
    assert variables == {
        "controlPlaneEndpoint": {"host": "10.0.0.1", "port": 6443},
        "controlPlanePool": "cp",
        "workerPool": "w",
    }


def test_the_shim_is_valid_posix_shell() -> None:
    proc = subprocess.run(["sh", "-n", str(kubeadm.SHIM)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
