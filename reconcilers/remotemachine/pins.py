"""Trust-on-first-use pins: where a machine's pins are recorded, and how.

Invariants:
- A pin is never replaced: it is added only where none is, on a fresh read, written with that
  read's resourceVersion as precondition (a concurrent writer makes it a Conflict).
- A machine holding a pooled host records on the PooledRemoteMachine: the host's pins are
  authoritative (``reconcilers.pool.claims``), and the machine only mirrors them.
"""

from __future__ import annotations

import copy
from typing import Any

from capi_remote import Conflict, KubeClient, patch_object
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from reconcilers.remotemachine.backend import Machine

JSONDict = dict[str, Any]


async def record_pins(client: KubeClient, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
    """Annotate the pins' holder with the keys ``seen`` it has no pin for; the pins in force
    for those annotations (an earlier pin wins over the key just seen)."""
    resource, holder = REMOTE_MACHINES, machine.rm
    if machine.pooled is not None:
        resource, holder = POOLED_REMOTE_MACHINES, machine.pooled
    meta = holder["metadata"]
    current = await client.get(resource, meta["namespace"], meta["name"])
    if current["metadata"]["uid"] != meta["uid"]:
        raise Conflict(f"{resource.kind} {meta['name']} is gone")
    pins = dict(current["metadata"].get("annotations") or {})
    missing = {name: value for name, value in seen.items() if not pins.get(name)}
    if missing:
        desired = copy.deepcopy(current)
        desired["metadata"].setdefault("annotations", {}).update(missing)
        await patch_object(client, resource, current, desired)
        pins.update(missing)
    return {name: pins[name] for name in seen}
