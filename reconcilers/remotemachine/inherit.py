"""A RemoteMachine's labels and annotations, inherited by its Cluster API Machine.

The reference provider copies them onto the Machine (users select Machines on them); so do we,
for standalone and pooled machines alike: a claimed pool host's labels and annotations are added
to the RemoteMachine first (``reconcilers.pool.claims.host_spec_for``), and reach the Machine
from there.

Invariants:
- Only keys the Machine lacks are added: a value on the Machine (the user's, a MachineSet's) is
  never changed, and nothing is ever removed.
- Cluster API's own keys (``cluster.x-k8s.io/``), ours (``remote.infrastructure.cluster.x-k8s.io/``:
  host-key pins, force-release, ...) and ``kubectl.kubernetes.io/`` (last-applied-configuration
  describes the RemoteMachine, not the Machine) are never inherited.
- No write when there is nothing to add.
"""

from __future__ import annotations

from typing import Any

from capi_remote import KubeClient
from capi_remote.resources import MACHINES

JSONDict = dict[str, Any]

_NOT_INHERITED = (
    "cluster.x-k8s.io/",
    "remote.infrastructure.cluster.x-k8s.io/",
    "kubectl.kubernetes.io/",
)


def missing_metadata(rm: JSONDict, machine: JSONDict) -> JSONDict:
    """The ``metadata`` merge patch that adds to ``machine`` what it lacks of ``rm``'s."""
    patch: JSONDict = {}
    for field in ("labels", "annotations"):
        have = machine["metadata"].get(field) or {}
        add = {
            key: value
            for key, value in (rm["metadata"].get(field) or {}).items()
            if key not in have and not key.startswith(_NOT_INHERITED)
        }
        if add:
            patch[field] = add
    return patch


async def inherit_metadata(client: KubeClient, rm: JSONDict, machine: JSONDict) -> bool:
    """Add the RemoteMachine's labels and annotations the Machine lacks; True if it wrote."""
    patch = missing_metadata(rm, machine)
    if not patch:
        return False
    meta = machine["metadata"]
    await client.patch(MACHINES, meta["namespace"], meta["name"], {"metadata": patch})
    return True
