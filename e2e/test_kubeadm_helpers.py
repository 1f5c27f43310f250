"""The rendering of the shipped templates, as clusterctl would, without a test bed."""

from __future__ import annotations

import pytest

from capi_remote_testbed import clustertemplates


def test_envsubst_follows_clusterctl() -> None:
    assert clustertemplates.envsubst("${A}-${B:=two}", {"A": "one"}) == "one-two"
    assert clustertemplates.envsubst("${B:=two}", {"B": "three"}) == "three"
    with pytest.raises(KeyError, match="C"):
        clustertemplates.envsubst("${C}", {})


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
