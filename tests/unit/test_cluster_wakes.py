"""A Cluster's change wakes its machines only when it changed what they read of it (paused,
infrastructure provisioned, deletion), not on every status write Cluster API makes."""

from __future__ import annotations

import copy
from typing import Any

from capi_remote import Store
from capi_remote.kube.informer import Event
from reconcilers.remotemachine.watches import CLUSTER_INDEX, _cluster, cluster_to_remote

JSONDict = dict[str, Any]


def machine(index: int) -> JSONDict:
    return {
        "metadata": {
            "namespace": "ns",
            "name": f"m{index}",
            "labels": {"cluster.x-k8s.io/cluster-name": "c"},
        },
        "spec": {"infrastructureRef": {"kind": "RemoteMachine", "name": f"rm{index}"}},
    }


CLUSTER: JSONDict = {
    "metadata": {"namespace": "ns", "name": "c"},
    "spec": {},
    "status": {
        "initialization": {"infrastructureProvisioned": True},
        "workers": {"readyReplicas": 1},
    },
}


def changed(edit: Any) -> Event:
    new = copy.deepcopy(CLUSTER)
    edit(new)
    return Event("MODIFIED", new, CLUSTER)


def test_only_changes_machines_read_wake_them() -> None:
    machines = Store({CLUSTER_INDEX: _cluster})
    for i in range(3):
        machines.upsert(machine(i))
    everyone = ["rm0", "rm1", "rm2"]

    def woken(event: Event) -> list[str]:
        return sorted(r.name for r in cluster_to_remote(machines, event))

    assert woken(Event("ADDED", CLUSTER)) == everyone
    assert woken(changed(lambda c: c["status"]["workers"].update(readyReplicas=2))) == []
    assert woken(changed(lambda c: c["spec"].update(paused=True))) == everyone
    unprovisioned = changed(
        lambda c: c["status"]["initialization"].update(infrastructureProvisioned=False)
    )
    assert woken(unprovisioned) == everyone
    assert (
        woken(changed(lambda c: c["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z")))
        == everyone
    )
    assert woken(Event("RESYNC", CLUSTER)) == everyone
