"""The kubeadm providers' resources the e2e reads. ``capi_remote_testbed.realcluster`` adds what
real nodes need to the shipped ClusterClass and ``capi_remote_testbed.clustertemplates`` renders
it and the topology Cluster."""

from __future__ import annotations

from capi_remote.kube.client import Resource

KUBEADM_CONTROL_PLANES = Resource(
    "controlplane.cluster.x-k8s.io", "v1beta2", "kubeadmcontrolplanes", "KubeadmControlPlane"
)
