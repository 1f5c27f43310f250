"""The kubeadm flavour's pieces that need no test bed: the rendered ClusterClass and Cluster."""

from __future__ import annotations

import base64

import pytest
import yaml

from capi_remote_testbed.kubeadmimages import IMAGE_REPOSITORY
from e2e import kubeadm, realkubeadm, realtopology


def test_envsubst_follows_clusterctl() -> None:
    assert kubeadm.envsubst("${A}-${B:=two}", {"A": "one"}) == "one-two"
    assert kubeadm.envsubst("${B:=two}", {"B": "three"}) == "three"
    with pytest.raises(KeyError, match="C"):
        kubeadm.envsubst("${C}", {})


def test_cluster_class_is_the_shipped_one_plus_what_real_nodes_and_the_test_need() -> None:
    documents = {d["kind"]: d for d in realtopology.cluster_class("ns")}
    assert set(documents) == {
        "ClusterClass", "RemoteClusterTemplate", "KubeadmControlPlaneTemplate",
        "RemoteMachineTemplate", "KubeadmConfigTemplate",
    }  # fmt: skip
    assert all(d["metadata"]["namespace"] == "ns" for d in documents.values())
    kcp = documents["KubeadmControlPlaneTemplate"]["spec"]["template"]["spec"]["kubeadmConfigSpec"]
    assert kcp["clusterConfiguration"]["imageRepository"] == IMAGE_REPOSITORY
    assert "skipPhases" not in kcp["initConfiguration"]  # kubeadm's addons run
    # kube-proxy's configuration, appended to kubeadm init's: a document of its own.
    (proxy,) = [f for f in kcp["files"] if f["path"] == realkubeadm.KUBE_PROXY_CONFIG]
    appended = (
        "apiVersion: v1beta4\nkind: ClusterConfiguration\n"
        + base64.b64decode(proxy["content"]).decode()
    )
    documents_after = [d for d in yaml.safe_load_all(appended) if d]
    assert documents_after[-1]["conntrack"] == {"maxPerCore": 0}
    assert len(documents_after) == 2
    assert realkubeadm.KUBE_PROXY_CONFIG in kcp["preKubeadmCommands"][0]
    worker = documents["KubeadmConfigTemplate"]["spec"]["template"]["spec"]
    assert worker["joinConfiguration"]["nodeRegistration"]["name"] == "{{ v1.local_hostname }}"
    for spec in (kcp, worker):
        paths = [f["path"] for f in spec["files"]]
        assert f"{realkubeadm.PATCHES_DIR}/kubeletconfiguration+merge.yaml" in paths
        assert paths[-1] == realtopology.INSTANCE_FILE
        for configuration in ("initConfiguration", "joinConfiguration"):
            if configuration in spec:
                registration = spec[configuration]["nodeRegistration"]
                assert registration["ignorePreflightErrors"] == realkubeadm.IGNORE_PREFLIGHT_ERRORS


def test_topology_cluster_renders_every_variable() -> None:
    cluster = kubeadm.topology_cluster(
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
