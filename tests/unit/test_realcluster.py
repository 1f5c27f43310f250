"""The real cluster of ``dev up`` and the real-kubeadm e2e, without hosts: the ClusterClass it
applies, its sample Deployment, and the commands ``dev up`` suggests."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import yaml

from capi_remote_testbed import realcluster
from capi_remote_testbed.cli import next_steps
from capi_remote_testbed.clustertemplates import shipped_cluster_class
from capi_remote_testbed.kubeadmimages import IMAGE_REPOSITORY


def test_cluster_class_is_the_shipped_one_plus_the_node_settings() -> None:
    documents = realcluster.cluster_class("demo")
    shipped = shipped_cluster_class("demo")
    assert [d["kind"] for d in documents] == [d["kind"] for d in shipped]
    assert documents[0] == shipped[0]  # the ClusterClass itself is untouched
    by_kind = {d["kind"]: d for d in documents}
    kcp = by_kind["KubeadmControlPlaneTemplate"]["spec"]["template"]["spec"]["kubeadmConfigSpec"]
    assert kcp["clusterConfiguration"]["imageRepository"] == IMAGE_REPOSITORY
    assert "skipPhases" not in kcp["initConfiguration"]  # kubeadm's addons run
    # kube-proxy's configuration, appended to kubeadm init's: a document of its own.
    (proxy,) = [f for f in kcp["files"] if f["path"] == realcluster.KUBE_PROXY_CONFIG]
    appended = "kind: ClusterConfiguration\n" + base64.b64decode(proxy["content"]).decode()
    (_, kube_proxy) = [d for d in yaml.safe_load_all(appended) if d]
    assert kube_proxy["conntrack"] == {"maxPerCore": 0}
    assert realcluster.INIT_CONFIG in kcp["preKubeadmCommands"][0]
    worker = by_kind["KubeadmConfigTemplate"]["spec"]["template"]["spec"]
    for spec in (kcp, worker):
        registration = spec["joinConfiguration"]["nodeRegistration"]
        assert registration["name"] == "{{ ds.meta_data.local_hostname }}"  # still the jinja
        assert spec["joinConfiguration"]["patches"] == {"directory": realcluster.PATCHES_DIR}
        assert registration["ignorePreflightErrors"] == ["SystemVerification"]
        assert registration["imagePullPolicy"] == "Never"  # preloaded: no ImagePull check
        patch = spec["files"][0]
        assert patch["path"].startswith(realcluster.PATCHES_DIR + "/kubeletconfiguration")
        assert yaml.safe_load(base64.b64decode(patch["content"])) == realcluster.KUBELET_PATCH
        assert realcluster.KUBELET_PATCH["failCgroupV1"] is False


def test_the_sample_runs_an_image_made_here_and_never_pulls() -> None:
    deployment = realcluster.sample_deployment()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith(IMAGE_REPOSITORY + "/")
    assert container["imagePullPolicy"] == "Never"
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": realcluster.SAMPLE}


def test_the_workers_replicas_are_left_to_kubectl_scale() -> None:
    """A replica count in the topology would make the Cluster own it and revert ``kubectl
    scale``; the other topology fields are the shipped flavor's."""
    hosts = [SimpleNamespace(name=f"host-{i}", address=f"10.0.0.{i}", port=22) for i in range(4)]
    fleet: Any = SimpleNamespace(hosts=hosts)
    real = realcluster.RealCluster(None, fleet, "demo", "demo", workers=2)  # type: ignore[arg-type]
    cluster = real.objects()[-1]
    (deployment,) = cluster["spec"]["topology"]["workers"]["machineDeployments"]
    assert "replicas" not in deployment
    assert deployment["class"] and cluster["spec"]["topology"]["controlPlane"]["replicas"] == 1


def test_next_steps_name_both_kubeconfigs_and_scale_up_only_with_a_spare_host() -> None:
    steps = next_steps("/m.kubeconfig", "/w.kubeconfig", workers=2, spare=1)
    assert "kubectl --kubeconfig /w.kubeconfig get nodes -o wide" in steps
    assert "kubectl --kubeconfig /w.kubeconfig logs deployment/sample" in steps
    assert any("/m.kubeconfig get cluster,kubeadmcontrolplane,machines -A" in s for s in steps)
    scale = "/m.kubeconfig scale machinedeployment -n demo -l cluster.x-k8s.io/cluster-name=demo"
    assert sum(f"{scale} --replicas=3" in s for s in steps) == 1
    assert sum(f"{scale} --replicas=1" in s for s in steps) == 1
    without_spare = next_steps("/m.kubeconfig", "/w.kubeconfig", workers=2, spare=0)
    assert not any("--replicas=3" in s for s in without_spare)
