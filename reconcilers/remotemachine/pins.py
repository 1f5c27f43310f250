"""Trust-on-first-use pins: where a machine's pins are recorded, and how.

Invariants:
- A pin is never replaced: it is added only where none is, on a fresh read, written with that
  read's resourceVersion as precondition. A concurrent writer (Cluster API updates the same
  object) makes that a Conflict, and the read and write are tried again (``PIN_WRITE_TRIES``):
  a busy object must not end the attempt before anything ran.
- A machine holding a pooled host records on the PooledRemoteMachine: the host's pins are
  authoritative (``reconcilers.pool.claims``), and the machine only mirrors them.
"""

from __future__ import annotations

import copy
from typing import Any

import tenacity

from capi_remote import Conflict, KubeClient, patch_object
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from reconcilers.remotemachine.backend import Machine

JSONDict = dict[str, Any]
PIN_WRITE_TRIES = 5


class HolderGone(Conflict):
    """The object the pins belong on was deleted (and maybe made again): nothing to retry."""


async def record_pins(client: KubeClient, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
    """Annotate the pins' holder with the keys ``seen`` it has no pin for; the pins in force
    for those annotations (an earlier pin wins over the key just seen)."""
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(
            lambda error: isinstance(error, Conflict) and not isinstance(error, HolderGone)
        ),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
        stop=tenacity.stop_after_attempt(PIN_WRITE_TRIES),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await _record_once(client, machine, seen)
    raise AssertionError("unreachable: tenacity either returns or raises")


async def _record_once(
    client: KubeClient, machine: Machine, seen: dict[str, str]
) -> dict[str, str]:
    resource, holder = REMOTE_MACHINES, machine.rm
    if machine.pooled is not None:
        resource, holder = POOLED_REMOTE_MACHINES, machine.pooled
    meta = holder["metadata"]
    current = await client.get(resource, meta["namespace"], meta["name"])
    if current["metadata"]["uid"] != meta["uid"]:
        raise HolderGone(f"{resource.kind} {meta['name']} is gone")
    pins = dict(current["metadata"].get("annotations") or {})
    missing = {name: value for name, value in seen.items() if not pins.get(name)}
    if missing:
        desired = copy.deepcopy(current)
        desired["metadata"].setdefault("annotations", {}).update(missing)
        await patch_object(client, resource, current, desired)
        pins.update(missing)
    return {name: pins[name] for name in seen}
