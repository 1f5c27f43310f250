"""The PooledRemoteMachine reconciler: keeps each pooled host's health fresh (a probe over
SSH while it is free), mirrors its claim into status, and frees stale claims (the claim protocol
itself is in ``claims.py``).

Health states: ``Healthy`` (logged in), ``NotClean`` (logged in, and a bootstrap's leftovers are
there: released without a successful cleanup; a Warning Event when a probe first finds it so),
``Untrusted`` (the host answered but its key is not the one the host-key policy trusts, or there
is no policy to trust one), ``Unreachable`` (any other SSH failure), ``Unknown`` (the probe could
not start: a Secret or ConfigMap it needs is missing). Only ``Healthy`` hosts are claimed.
A free host is probed again at once when anything it is reached by changes: its spec (a new
generation) or a Secret or ConfigMap its spec names (e.g. the known_hosts a policy points to)."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from capi_remote import (
    ApiError,
    Conflict,
    Event,
    EventRecorder,
    Informer,
    KubeClient,
    Provider,
    ReconcileContext,
    Request,
    Result,
    patch_object,
    patch_status,
)
from capi_remote.api import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    HOST_KEY_FINGERPRINT_ANNOTATION,
)
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote.ssh import HostKeyMismatch, HostKeyUnknown, SSHError
from capi_remote.ssh.probe import Leftovers
from reconcilers import conditions as c
from reconcilers.pool.claims import (
    CLAIM_INDEX,
    INDEXERS,
    MOVE_GRACE,
    RECHECK_ANNOTATION,
    bound_here,
    claimant_key,
    release_stale,
)
from reconcilers.remote import HostAccess, MissingSecret
from reconcilers.secrets import SECRET_REF_INDEX, ObjectSource, pooled_secrets

JSONDict = dict[str, Any]
PROBE_INTERVAL = 300.0
PROBE_RETRY = 5.0
NOT_CLEAN = "NotClean"

_log = structlog.get_logger("capi_remote.pool")


Prober = Callable[[JSONDict], Awaitable[JSONDict]]
"""Probe a pooled host; returns a ``status.health`` dict (state, reachable, message, facts)."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> float:
    if not timestamp:
        return float("inf")
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(datetime.UTC) - then).total_seconds()


def first_use_pins(obj: JSONDict, spec: JSONDict, seen: JSONDict) -> dict[str, str]:
    """Annotations pinning the keys just verified for hosts (the machine's, its bastion's) whose
    policy is trust-on-first-use and that have no pin yet.

    ``seen`` holds ``hostKeyFingerprint``/``bastionHostKeyFingerprint``. Pins are annotations on
    the object holding the spec, where ``clusterctl move`` keeps them; a pooled host's pins are
    inherited by every RemoteMachine that claims it, so a later claimant does not trust anew."""
    recorded = obj["metadata"].get("annotations") or {}
    pins: dict[str, str] = {}
    hops = (
        (spec, HOST_KEY_FINGERPRINT_ANNOTATION, "hostKeyFingerprint"),
        (spec.get("bastion") or {}, BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
         "bastionHostKeyFingerprint"),
    )  # fmt: skip
    for holder, annotation, key in hops:
        policy = holder.get("hostKeyPolicy") or {}
        if policy.get("trustOnFirstUse") and not recorded.get(annotation) and seen.get(key):
            pins[annotation] = str(seen[key])
    return pins


async def _annotate(client: KubeClient, obj: JSONDict, annotations: dict[str, str | None]) -> None:
    """Set (None: remove) annotations on exactly the version ``obj`` is, or raise Conflict: a
    re-check asked for after the probe started is never cleared by it (a request that changes
    nothing, the same value again while the mark is there, joins the pending one)."""
    desired = copy.deepcopy(obj)
    current = desired["metadata"].setdefault("annotations", {})
    for key, value in annotations.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    await patch_object(client, POOLED_REMOTE_MACHINES, obj, desired)


class PooledRemoteMachineReconciler:
    """Keeps each pooled host's health fresh, mirrors its claim, and frees stale claims.

    Probes: a free host is probed when it is marked for a re-check, when its spec changed since
    its last probe (``health.observedGeneration``), and every PROBE_INTERVAL. What a probe writes
    (health, first-use pins, the mark's removal) is conditional on the version it started from,
    so a request or spec change that came while it ran is answered by the next probe, never
    swallowed by this one."""

    def __init__(
        self,
        client: KubeClient,
        pooled: Informer,
        machines: Informer,
        prober: Prober,
        events: EventRecorder,
    ) -> None:
        self.client = client
        self.events = events
        self.pooled = pooled.store
        self.machines = machines.store
        self.prober = prober
        # Hosts a Secret or ConfigMap they name changed for since their last reconcile (in
        # memory: after a restart the periodic probe covers a change made meanwhile).
        self._references_changed: set[tuple[str, str]] = set()

    def references_changed(self, request: Request) -> None:
        """Have the next reconcile of this host probe it (if free), whatever its last probe."""
        self._references_changed.add((request.namespace, request.name))

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        # Taken before anything else: a change while this reconcile runs marks it again, and a
        # reconcile that fails (e.g. a write conflict) leaves it for the retry.
        key = (request.namespace, request.name)
        changed = key in self._references_changed
        self._references_changed.discard(key)
        try:
            return await self._reconcile(request, changed)
        except BaseException:
            if changed:
                self._references_changed.add(key)
            raise

    async def _reconcile(self, request: Request, changed: bool) -> Result:
        obj = self.pooled.get_by_name(request.namespace, request.name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result()
        claim = obj.get("spec", {}).get("claim")
        if not claim and await self._adopt_status_reservation(obj):
            return Result()  # the claim's own event brings us back
        stale = await self._why_stale(claim, obj) if claim else None
        if claim and stale is not None:
            young = MOVE_GRACE - _age(obj["metadata"].get("creationTimestamp"))
            made_claimed = obj["metadata"].get("generation") == 1  # created with its claim
            if young > 0 and made_claimed and claim.get("namespace") == request.namespace:
                # Moved by clusterctl before its claimant, maybe: wait for it a little.
                return Result(requeue_after=min(young, PROBE_RETRY))
            if await release_stale(self.client, obj, claim, _log):
                reason, message = stale
                if reason == c.CLAIM_RELEASED:
                    self.events.record(obj, "Normal", reason, message)
                else:
                    self.events.record(obj, "Warning", reason, message)
            return Result()  # the release's own event brings us back
        status = copy.deepcopy(obj.get("status") or {})
        status["reserved"] = bool(claim)
        if claim:
            status["machineRef"] = {"name": claim["name"], "namespace": claim["namespace"]}
        else:
            status.pop("machineRef", None)
        health = status.get("health") or {}
        marked = RECHECK_ANNOTATION in obj["metadata"].get("annotations", {})
        generation = obj["metadata"].get("generation")
        recheck = (
            marked
            or changed
            or health.get("state") in (None, "Unknown")
            or health.get("observedGeneration") != generation  # reached differently now
        )
        due = _age(health.get("lastProbeTime")) >= PROBE_INTERVAL
        # A claimed host is the RemoteMachine's business: probing it would compete for sshd.
        retry_soon, found_before = False, health.get("state")
        if (recheck or due) and not claim:
            health = {**await self.prober(obj), "observedGeneration": generation}
            # "Unknown": the probe could not even start (a Secret or ConfigMap it needs is not
            # there or not cached yet): look again soon instead of in PROBE_INTERVAL.
            retry_soon = health.get("state") == "Unknown"
            status["health"] = health if retry_soon else {**health, "lastProbeTime": _now()}
        # Both writes are conditional on the version the probe started from (the status
        # write's precondition, then the version it wrote): a re-check asked for or a spec
        # changed meanwhile makes them a Conflict, and the reconcile that follows probes anew.
        written = await patch_status(self.client, POOLED_REMOTE_MACHINES, obj, status)
        if health.get("state") == NOT_CLEAN and found_before != NOT_CLEAN:
            self.events.record(obj, "Warning", c.HOST_NOT_CLEAN, str(health.get("message")))
        annotations: dict[str, str | None] = {}
        if marked and not claim and not retry_soon:  # cleared only by a probe that ran
            annotations[RECHECK_ANNOTATION] = None
        annotations.update(first_use_pins(obj, obj["spec"]["machine"], status.get("health") or {}))
        if annotations:
            await _annotate(self.client, written or obj, annotations)
        return Result(requeue_after=PROBE_RETRY if retry_soon else PROBE_INTERVAL)

    async def _adopt_status_reservation(self, obj: JSONDict) -> bool:
        """k0smotron's provider kept reservations in status only (``reserved``/``machineRef``).
        Adopt one into ``spec.claim`` when its RemoteMachine really uses this host, so hosts in
        use never look free after switching providers. Our own mirror of a released claim does
        not qualify: its RemoteMachine is gone or deleting."""
        status = obj.get("status") or {}
        ref = status.get("machineRef") or {}
        if not status.get("reserved") or not ref.get("name"):
            return False
        namespace = ref.get("namespace") or obj["metadata"]["namespace"]
        machine = self.machines.get_by_name(namespace, ref["name"])
        address = obj.get("spec", {}).get("machine", {}).get("address")
        if (
            machine is None
            or machine["metadata"].get("deletionTimestamp")
            or machine.get("spec", {}).get("address") != address
        ):
            return False
        claim = {"name": ref["name"], "namespace": namespace, "uid": machine["metadata"]["uid"]}
        patch = {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"claim": claim},
        }
        try:
            await self.client.patch(
                POOLED_REMOTE_MACHINES, obj["metadata"]["namespace"], obj["metadata"]["name"], patch
            )
        except ApiError as error:
            if error.conflict:
                raise Conflict(
                    "PooledRemoteMachine changed while adopting its reservation"
                ) from error
            raise
        _log.info(
            "adopted a status-only reservation", pooled=obj["metadata"]["name"], machine=ref["name"]
        )
        return True

    async def _why_stale(self, claim: JSONDict, pooled: JSONDict) -> tuple[str, str] | None:
        """Why the claim counts for nobody, as an Event's reason and message (None: it may be
        valid). Its RemoteMachine is gone or another object now (same name, new UID): deleted
        before its first start, which alone gives it the finalizer that releases the claim
        itself, so an ordinary deletion (``ClaimReleased``). A Warning (``StaleClaimReleased``):
        it names another namespace's RemoteMachine (never valid, and that namespace is not
        read), or one that went to another host (it claimed two at once, e.g. two controllers
        raced for it). Gone and moved are decided on a fresh read: the cache may lag."""
        namespace, name = claim.get("namespace"), claim.get("name")
        who = f"the claim of RemoteMachine {namespace}/{name}"
        if namespace != pooled["metadata"]["namespace"]:
            return c.STALE_CLAIM_RELEASED, (
                f"released {who}: a claim counts only within the host's own namespace"
            )
        cached = self.machines.get_by_name(str(namespace), str(name))
        if cached is not None and not _uses_another_host(cached, claim, pooled):
            return None
        try:
            fresh = await self.client.get(REMOTE_MACHINES, str(namespace), str(name))
        except ApiError as error:
            if error.not_found:
                return c.CLAIM_RELEASED, f"released {who}: it does not exist"
            raise
        moved = bound_here(fresh, pooled)  # clusterctl move: a new UID, the same binding
        if claim.get("uid") and fresh["metadata"].get("uid") != claim["uid"] and not moved:
            return c.CLAIM_RELEASED, f"released {who}: UID {claim['uid']} no longer exists"
        if _uses_another_host(fresh, claim, pooled):
            return c.STALE_CLAIM_RELEASED, f"released {who}: it uses another host"
        return None


_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def _uses_another_host(machine: JSONDict, claim: JSONDict, pooled: JSONDict) -> bool:
    if bound_here(machine, pooled):
        return False  # ours, whatever its UID (clusterctl move gives it a new one)
    uid = claim.get("uid")
    if uid and machine["metadata"].get("uid") != uid:
        return True
    return bool(machine.get("spec", {}).get("address"))


def _not_clean_message(leftovers: Leftovers) -> str:
    """What a probe found and how to clean it (paths are our settings', never the host's text)."""
    commands = []
    if leftovers.sentinel:
        commands.append(f"rm -f {leftovers.sentinel}")
    if leftovers.state_dirs:
        commands.append(f"rm -rf {leftovers.state_root}/*")
    return (
        f"found {leftovers.describe()}: an earlier machine's bootstrap, never cleaned up (released"
        " after failed cleanups or with force-release). Reset what its node left (e.g. kubeadm"
        f" reset, k0s reset), run {'; '.join(commands)} as root, then annotate the host with"
        f" {RECHECK_ANNOTATION}=<any value> (docs/troubleshooting.md)"
    )


def probe_with(access: HostAccess) -> Prober:
    """A prober that logs into the pooled host and reports its health and facts."""

    async def prober(pooled: JSONDict) -> JSONDict:
        meta = pooled["metadata"]
        pins = meta.get("annotations") or {}
        try:
            target = access.target_for(meta["namespace"], pooled["spec"]["machine"], pins)
        except (MissingSecret, ValueError) as error:
            return {"state": "Unknown", "reachable": False, "message": str(error)}
        try:
            facts = await access.probe(target)
        except SSHError as error:
            untrusted = isinstance(error, HostKeyUnknown | HostKeyMismatch)
            return {
                "state": "Untrusted" if untrusted else "Unreachable",
                "reachable": False,
                "message": f"{error.reason}: {error.message}",
            }
        leftovers = facts.leftovers
        return {
            "state": "Healthy" if leftovers.clean else NOT_CLEAN,
            "reachable": True,
            "message": f"logged in as {target.credentials.user}"
            if leftovers.clean
            else _not_clean_message(leftovers),
            "hostKeyFingerprint": facts.host_key_fingerprint,
            "bastionHostKeyFingerprint": facts.bastion_host_key_fingerprint,
            "facts": {
                "os": facts.os_pretty_name,
                "kernel": facts.kernel,
                "arch": _ARCH.get(facts.arch, facts.arch),
                "cpus": facts.cpus,
                "memory": f"{facts.memory_bytes // 2**20}Mi",
                "hostname": facts.hostname,
                "addresses": [a.address for a in facts.addresses if a.scope == "global"],
            },
        }

    return prober


def pool_informer(provider: Provider) -> Informer:
    informer = provider.manager.informer(POOLED_REMOTE_MACHINES)
    for name, func in INDEXERS.items():
        informer.store.add_indexer(name, func)
    informer.store.add_indexer(SECRET_REF_INDEX, pooled_secrets)
    return informer


def setup(provider: Provider, prober: Prober, sources: tuple[ObjectSource, ...]) -> None:
    """Register the controller; ``sources`` are the Secret and ConfigMap sources probes read
    through, whose changes re-probe the hosts naming the changed object."""
    manager = provider.manager
    pooled = pool_informer(provider)
    machines = manager.informer(REMOTE_MACHINES)
    reconciler = PooledRemoteMachineReconciler(
        provider.client, pooled, machines, prober, manager.events
    )

    def deleted_machine_to_claimed_host(event: Event) -> list[Request]:
        if event.type != "DELETED":
            return []
        meta = event.obj["metadata"]
        key = claimant_key(meta["namespace"], meta["name"])
        return [
            Request(meta["namespace"], p["metadata"]["name"])
            for p in pooled.store.by_index(CLAIM_INDEX, key)
        ]

    controller = (
        manager.controller(
            "pooledremotemachine",
            reconciler,
            for_=POOLED_REMOTE_MACHINES,
            workers=provider.options.pool_workers,
        )
        .watches(REMOTE_MACHINES, deleted_machine_to_claimed_host)
        .build()
    )

    def referenced_object_changed(event: Event) -> None:
        if event.type == "RESYNC":  # nothing changed: a handler's first look, or a resync
            return
        meta = event.obj["metadata"]
        for host in pooled.store.by_index(
            SECRET_REF_INDEX, f"{meta.get('namespace', '')}/{meta['name']}"
        ):
            request = Request(host["metadata"]["namespace"], host["metadata"]["name"])
            reconciler.references_changed(request)
            controller.enqueue(request)

    for source in sources:
        source.add_handler(referenced_object_changed)
