"""A Machine inherits its RemoteMachine's labels and annotations as the reference provider's do:
only keys it lacks, never Cluster API's, ours or kubectl's."""

from __future__ import annotations

from typing import Any

from reconcilers.remotemachine.inherit import missing_metadata

JSONDict = dict[str, Any]


def meta(labels: dict[str, str], annotations: dict[str, str] | None = None) -> JSONDict:
    return {"metadata": {"labels": labels, "annotations": annotations or {}}}


def test_the_machine_gets_what_it_lacks_and_keeps_what_it_has() -> None:
    rm = meta(
        {"zone": "rack-1", "role": "gpu", "node.cluster.x-k8s.io/tier": "fast"},
        {"owner": "team-a"},
    )
    machine = meta({"role": "cpu", "from-user": "x"})
    assert missing_metadata(rm, machine) == {
        "labels": {"zone": "rack-1", "node.cluster.x-k8s.io/tier": "fast"},
        "annotations": {"owner": "team-a"},
    }


def test_cluster_api_internal_and_kubectl_keys_are_not_inherited() -> None:
    rm = meta(
        {"cluster.x-k8s.io/cluster-name": "c", "remote.infrastructure.cluster.x-k8s.io/x": "1"},
        {
            "cluster.x-k8s.io/cloned-from-name": "t",
            "remote.infrastructure.cluster.x-k8s.io/host-key-fingerprint": "SHA256:x",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        },
    )
    assert missing_metadata(rm, {"metadata": {}}) == {}


def test_nothing_to_add_is_no_patch() -> None:
    rm = meta({"zone": "rack-1"}, {"owner": "team-a"})
    assert missing_metadata(rm, meta({"zone": "other"}, {"owner": "b"})) == {}
