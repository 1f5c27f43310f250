"""The claim protocol RemoteMachines use to take a host from a pool, and to give it back.

Claim protocol (safe with any number of controller replicas):
- A claim lives in ``spec.claim`` of the PooledRemoteMachine ({name, namespace, uid} of the
  RemoteMachine), so ``clusterctl move`` keeps it; ``status.reserved``/``machineRef`` only mirror
  it for the reference's printer columns.
- A claim counts only within the PooledRemoteMachine's own namespace, and only for the
  RemoteMachine of its UID where it records one.
- To claim, a RemoteMachine patches ``spec.claim`` of a host the cache shows free, with the
  cached resourceVersion as precondition: the patch applies only to exactly the version judged
  free, so of two claimants racing for one host exactly one wins, and a stale cache costs a 409,
  never a wrong claim. The CRD's transition rule also refuses moving a claim to another claimant.
- One process never sends two claims for one host version: :class:`PoolClaims` remembers each
  claim it sent (won, lost or in flight) until the cache has moved past the version it was made
  against, and its other claimants skip that host meanwhile. So a pool of any size costs about
  one request per claim, not a 409 per worker racing for the same first free host, and picking
  a host takes the first few entries of the pool's free index, not a scan of the pool.
- A RemoteMachine first looks for a host it already holds (the cache, then the claims this process
  won that the cache does not show yet), so neither a crash nor a failure between claiming and
  recording the host claims a second one.
- Releasing clears the claim with a precondition too, and marks the host for a re-check.
- A stale claim is cleared by the pool reconciler (``reconciler.py``) with a Warning Event
  saying why: one naming another namespace's RemoteMachine, or one whose RemoteMachine is gone
  or another object now (checked with a fresh read). Nothing stays reserved for nobody. It is
  cleared only while the server still holds exactly that claim (fresh read, resourceVersion
  precondition), so a valid claim, or one a live claimant just made, is never cleared.
- ``clusterctl move`` recreates both sides: the pooled host arrives before its claimant (it has
  no owner, so it moves first), and the claimant arrives with a new UID but its spec, bound to
  this host. So a claimant bound to the host (:func:`bound_here`: same namespace and name, its
  spec's address and port the host's) holds it whatever its UID, and the claim of a
  PooledRemoteMachine created with it (generation 1) and younger than :data:`MOVE_GRACE` waits
  for its claimant before it is released as gone (a claim naming another namespace never
  waits; a claim made by a machine, a later change of the host's spec, never does).
- A bound RemoteMachine carries exactly the pooled host's host-key pins (:data:`PIN_ANNOTATIONS`),
  never pins of its own: whoever may create RemoteMachines does not decide which key the pool's
  host is trusted with. The host's pins are authoritative at use time too
  (:func:`with_host_pins`): an edit of the machine's pin annotations after the claim is undone
  and never used, and first-use pins of a held host are recorded on the host.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import attrs
import structlog
from structlog.typing import FilteringBoundLogger

from capi_remote import ApiError, Conflict, KubeClient, Store
from capi_remote.api import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    HOST_KEY_FINGERPRINT_ANNOTATION,
    PooledMachineSpec,
    RemoteMachineSpec,
)
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES

JSONDict = dict[str, Any]
RECHECK_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/recheck"
CLAIM_INDEX = "claimant"
POOL_INDEX = "pool"
#: Index of the hosts :func:`is_free` says are claimable, by ``namespace/pool``.
FREE_INDEX = "free"
PIN_ANNOTATIONS = (HOST_KEY_FINGERPRINT_ANNOTATION, BASTION_HOST_KEY_FINGERPRINT_ANNOTATION)
#: Seconds a new PooledRemoteMachine's claim waits for its claimant (``clusterctl move`` creates
#: the claimant later, after its owners).
MOVE_GRACE = 120.0

_default_log: FilteringBoundLogger = structlog.get_logger("capi_remote.pool")


def claimant_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def index_by_claimant(obj: JSONDict) -> list[str]:
    """The claimant's key; a claim naming another namespace counts for nobody."""
    claim = obj.get("spec", {}).get("claim")
    namespace = obj["metadata"].get("namespace", "")
    if not claim or claim.get("namespace") != namespace:
        return []
    return [claimant_key(namespace, claim["name"])]


def bound_here(machine: JSONDict, pooled: JSONDict) -> bool:
    """``machine``'s spec names ``pooled``'s host (address and port), as a claimant's does once
    bound to it; ``clusterctl move`` keeps that spec and gives the claimant a new UID."""
    address = machine.get("spec", {}).get("address")
    host = pooled["spec"]["machine"]
    # The models' defaults (the CRDs default the field, but an object may predate that).
    port = machine["spec"].get("port", attrs.fields(RemoteMachineSpec).port.default)
    host_port = host.get("port", attrs.fields(PooledMachineSpec).port.default)
    return bool(address) and (address, port) == (host["address"], host_port)


def holds(pooled: JSONDict, machine: JSONDict) -> bool:
    """``pooled`` is claimed by ``machine``: same namespace, same name, and the same UID where
    the claim records one (a new object of the same name is another claimant), unless it is
    bound to this host (the claimant moved by ``clusterctl move``)."""
    claim = pooled.get("spec", {}).get("claim") or {}
    meta = machine["metadata"]
    return (
        pooled["metadata"].get("namespace") == meta["namespace"]
        and (claim.get("namespace"), claim.get("name")) == (meta["namespace"], meta["name"])
        and (claim.get("uid") in (None, "", meta["uid"]) or bound_here(machine, pooled))
    )


def held_by(store: Store, machine: JSONDict) -> list[JSONDict]:
    """The pooled hosts ``machine`` holds (by the cache)."""
    meta = machine["metadata"]
    candidates = store.by_index(CLAIM_INDEX, claimant_key(meta["namespace"], meta["name"]))
    return [pooled for pooled in candidates if holds(pooled, machine)]


def index_by_pool(obj: JSONDict) -> list[str]:
    meta = obj["metadata"]
    return [f"{meta.get('namespace', '')}/{obj.get('spec', {}).get('pool', '')}"]


def pool_members(store: Store, namespace: str, pool: str) -> list[JSONDict]:
    return store.by_index(POOL_INDEX, f"{namespace}/{pool}")


def is_free(pooled: JSONDict) -> bool:
    """Claimable: unclaimed, not deleting, not waiting for the re-check a returned host gets
    before its next machine, and found Healthy by a probe of its current spec. A host not probed
    yet, or whose last probe could not start (a Secret or ConfigMap not known yet), is not: it
    may well be untrusted, and a machine that claimed it would fail for good (HostKeyUnknown)."""
    meta = pooled["metadata"]
    health = (pooled.get("status") or {}).get("health") or {}
    return (
        not pooled.get("spec", {}).get("claim")
        and not meta.get("deletionTimestamp")
        and RECHECK_ANNOTATION not in (meta.get("annotations") or {})
        and health.get("state") == "Healthy"
        and health.get("observedGeneration") == meta.get("generation")
    )


def _key(obj: JSONDict) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def index_free(obj: JSONDict) -> list[str]:
    return index_by_pool(obj) if is_free(obj) else []


#: The indexes a store of PooledRemoteMachines needs for claims.
INDEXERS = {CLAIM_INDEX: index_by_claimant, POOL_INDEX: index_by_pool, FREE_INDEX: index_free}


@attrs.define
class _Sent:
    """A claim this process sent: for whom, against which version, and the server's answer
    (None while in flight, or when it lost)."""

    claimant_uid: str
    version: str
    claimed: JSONDict | None = None


class PoolClaims:
    """Claims of pooled hosts by this process's RemoteMachines (the protocol is above)."""

    def __init__(self, client: KubeClient, store: Store) -> None:
        self.client = client
        self.store = store
        #: Pooled host key -> the claim sent for it whose version the cache still shows.
        self._sent: dict[str, _Sent] = {}

    def _settle(self) -> None:
        """Forget the claims the cache has caught up with (it shows a newer version)."""
        for key, sent in list(self._sent.items()):
            cached = self.store.get(key)
            if cached is None or cached["metadata"].get("resourceVersion") != sent.version:
                del self._sent[key]

    def _won(self, machine: JSONDict) -> JSONDict | None:
        uid = machine["metadata"]["uid"]
        for sent in self._sent.values():
            if sent.claimant_uid == uid and sent.claimed is not None:
                return sent.claimed
        return None

    def _next_free(self, namespace: str, pool: str) -> JSONDict | None:
        for candidate in self.store.iter_index(FREE_INDEX, f"{namespace}/{pool}"):
            if _key(candidate) not in self._sent:
                return candidate
        return None

    async def find_or_claim(self, machine: JSONDict, log: FilteringBoundLogger) -> JSONDict | None:
        """The pooled host this RemoteMachine holds, claiming a free one if it holds none."""
        meta = machine["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        held = held_by(self.store, machine)
        if held:
            return held[0]
        self._settle()
        won = self._won(machine)
        if won is not None:
            return won  # ours already; the cache has not caught up
        pool = machine["spec"]["pool"]
        while (candidate := self._next_free(namespace, pool)) is not None:
            key, version = _key(candidate), candidate["metadata"]["resourceVersion"]
            sent = self._sent[key] = _Sent(uid, version)
            patch = {
                "metadata": {"resourceVersion": version},
                "spec": {"claim": {"name": name, "namespace": namespace, "uid": uid}},
            }
            try:
                sent.claimed = await self.client.patch(
                    POOLED_REMOTE_MACHINES, namespace, candidate["metadata"]["name"], patch
                )
            except ApiError as error:
                if error.conflict or error.not_found or error.status == 422:
                    continue  # changed or taken since the cache saw it: skipped until it shows
                self._sent.pop(key, None)
                raise
            except BaseException:
                self._sent.pop(key, None)  # unknown whether it applied: the cache will tell
                raise
            log.info("claimed pooled machine", machine=name, pooled=candidate["metadata"]["name"])
            return sent.claimed
        return None


async def release(
    client: KubeClient,
    namespace: str,
    pooled_name: str,
    claimant: str,
    log: FilteringBoundLogger = _default_log,
) -> None:
    """Clear the claim if ``claimant`` (a RemoteMachine name) still holds it; mark for re-check."""

    def by_claimant(claim: JSONDict) -> bool:
        return claim.get("name") == claimant and claim.get("namespace") == namespace

    if await _clear(client, namespace, pooled_name, by_claimant):
        log.info("released pooled machine", pooled=pooled_name, machine=claimant)


async def release_stale(
    client: KubeClient, pooled: JSONDict, stale: JSONDict, log: FilteringBoundLogger
) -> bool:
    """Clear the claim ``stale`` (judged stale: another namespace's machine, or one that is gone
    or another object now) only if the server still holds exactly that claim; True if cleared.
    A claim that changed meanwhile (a live claimant took the freed host) is never touched."""
    meta = pooled["metadata"]
    if not await _clear(client, meta["namespace"], meta["name"], lambda claim: claim == stale):
        return False
    log.info("released a stale claim", pooled=meta["name"], claim=stale)
    return True


async def _clear(
    client: KubeClient, namespace: str, pooled_name: str, matches: Callable[[JSONDict], bool]
) -> bool:
    """Clear the claim if the fresh read's claim ``matches``, with that read's resourceVersion as
    precondition, and mark the host for a re-check; True if cleared. Conflict if it changed."""
    try:
        fresh = await client.get(POOLED_REMOTE_MACHINES, namespace, pooled_name)
    except ApiError as error:
        if error.not_found:
            return False
        raise
    claim = fresh.get("spec", {}).get("claim") or {}
    if not claim or not matches(claim):
        return False
    patch = {
        "metadata": {
            "resourceVersion": fresh["metadata"]["resourceVersion"],
            "annotations": {RECHECK_ANNOTATION: "true"},
        },
        "spec": {"claim": None},
    }
    try:
        await client.patch(POOLED_REMOTE_MACHINES, namespace, pooled_name, patch)
    except ApiError as error:
        if error.conflict:
            raise Conflict(f"PooledRemoteMachine {pooled_name} changed while releasing") from error
        raise
    return True


def host_spec_for(rm: JSONDict, pooled: JSONDict) -> JSONDict:
    """The RemoteMachine as it is once bound to ``pooled``: the pooled host says how to reach it
    (port, user, key...), its fields win over the defaults the template-made RemoteMachine got
    from the CRD, as in the reference; the host's labels and annotations are inherited, and its
    host-key pins replace any the RemoteMachine had."""
    desired = copy.deepcopy(rm)
    desired["spec"].update(copy.deepcopy(pooled["spec"]["machine"]))
    meta = desired["metadata"]
    for field in ("labels", "annotations"):
        extra = pooled["metadata"].get(field) or {}
        merged = {k: v for k, v in extra.items() if k != RECHECK_ANNOTATION}
        merged.update(meta.get(field) or {})
        if merged:
            meta[field] = merged
    annotations = meta.get("annotations") or {}
    for pin, value in pin_edits(desired, pooled).items():
        if value is None:
            annotations.pop(pin, None)
        else:
            annotations[pin] = value
    return desired


def held_host(store: Store, rm: JSONDict) -> JSONDict | None:
    """The pooled host a RemoteMachine of a pool holds (by the cache), if any."""
    if not rm.get("spec", {}).get("pool"):
        return None
    held = held_by(store, rm)
    return held[0] if held else None


def pin_edits(rm: JSONDict, pooled: JSONDict) -> dict[str, str | None]:
    """The annotation changes (None: remove) that give ``rm`` exactly the pooled host's pins:
    the host's pins win, and without one the machine has none either."""
    own = rm["metadata"].get("annotations") or {}
    host = pooled["metadata"].get("annotations") or {}
    return {pin: host.get(pin) for pin in PIN_ANNOTATIONS if own.get(pin) != host.get(pin)}


def with_host_pins(rm: JSONDict, pooled: JSONDict | None) -> JSONDict:
    """``rm`` as its host key is verified: holding a pooled host, it has exactly that host's
    pins, whatever its own annotations say (its author may edit them after the claim)."""
    edits = pin_edits(rm, pooled) if pooled is not None else {}
    if not edits:
        return rm
    annotations = {
        k: v for k, v in (rm["metadata"].get("annotations") or {}).items() if k not in edits
    }
    annotations.update({k: v for k, v in edits.items() if v is not None})
    return {**rm, "metadata": {**rm["metadata"], "annotations": annotations}}


async def unclaim_if_bound_elsewhere(
    client: KubeClient, rm: JSONDict, pooled: JSONDict, log: FilteringBoundLogger
) -> None:
    """Our write of the host into the RemoteMachine lost a race: if the winner (another
    controller replica) bound it to another host, the host we claimed is nobody's."""
    meta = rm["metadata"]
    try:
        fresh = await client.get(REMOTE_MACHINES, meta["namespace"], meta["name"])
    except ApiError as error:
        if not error.not_found:
            raise
        fresh = None
    address = (fresh or {}).get("spec", {}).get("address")
    if fresh is None or (address and address != pooled["spec"]["machine"]["address"]):
        await release(client, meta["namespace"], pooled["metadata"]["name"], meta["name"], log)


async def release_held(
    client: KubeClient, store: Store, rm: JSONDict, log: FilteringBoundLogger
) -> None:
    """Give back every pooled host ``rm`` holds (its deletion)."""
    meta = rm["metadata"]
    for pooled in held_by(store, rm):
        await release(client, meta["namespace"], pooled["metadata"]["name"], meta["name"], log)
