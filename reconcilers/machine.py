"""RemoteMachine: the InfraMachine of the contract. Waits for its owners and bootstrap data, runs
the bootstrap on the host over SSH (off the reconcile path, exactly once), reports providerID,
addresses and readiness; on deletion cleans the host and gives it back to its pool.

Level-triggered: each reconcile reads the cache, works out the single next step, writes status
only if it changed, and returns. Every wait has a condition reason and is ended by a watch
(Machine, Cluster, Secrets, pool hosts), never by polling.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import time
from typing import Any

import structlog

from capi_remote import (
    ApiError,
    Conflict,
    Controller,
    Event,
    EventRecorder,
    Informer,
    Provider,
    ReconcileContext,
    Request,
    Result,
    Selector,
    Store,
    own_object,
    patch_object,
    patch_status,
    request_for,
)
from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    parse_bootstrap,
    substitute_provider_id,
)
from capi_remote.resources import (
    CAPI_GROUP,
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote.ssh import Runner
from reconcilers import conditions as c
from reconcilers import pool as pools
from reconcilers import provisionjob
from reconcilers.common import (
    CLUSTER_NAME_LABEL,
    OwnWrites,
    copy_status,
    is_paused,
    mark,
    owner_name,
    unix_time,
)
from reconcilers.hostjobs import HostJobs, JobState, Outcome
from reconcilers.remote import (
    Deadlines,
    HostAccess,
    MissingSecret,
    NotYetKnown,
    cleanup_commands,
)
from reconcilers.secrets import BOOTSTRAP_SECRET_TYPE, ObjectSource
from reconcilers.workload import WorkloadClients, link_node

JSONDict = dict[str, Any]
FINALIZER = "remotemachine.k0smotron.io/finalizer"  # the reference's, so its objects just work
FORCE_RELEASE_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/force-release"
DEFAULT_MAX_ATTEMPTS = 5
CLEANUP_ATTEMPTS = 3
NODE_LINK_INTERVAL = 20.0
#: A cleanup that finds the host locked by a live job waits this long (from the deletion's
#: start) before locked counts as a failed attempt: a lock goes stale 60 s after its holder died.
CLEANUP_LOCK_PATIENCE = 180.0
#: How often a job looks again at a host another job holds locked.
LOCK_RETRY = 10.0
#: How soon to look again at a Secret whose watch has not listed yet (just after a start).
NOT_YET_KNOWN_RETRY = 0.5
SECRET_REF_INDEX = "secret-refs"
DATA_SECRET_INDEX = "data-secret"
CLUSTER_INDEX = "cluster"

_log = structlog.get_logger("capi_remote.machine")


def provider_id(address: str, port: int) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address
    return f"remote-machine://{host}:{port}"


def referenced_secrets(rm: JSONDict) -> list[str]:
    """``namespace/name`` of every Secret or ConfigMap a RemoteMachine's spec names, so their
    watches wake it (a name shared by a Secret and a ConfigMap only costs a spare reconcile)."""
    spec = rm.get("spec", {})
    namespace = rm["metadata"].get("namespace", "")
    names = set()
    for holder in (spec, spec.get("bastion") or {}):
        key = holder.get("sshKeyRef") or {}
        for ref in (
            key,
            key.get("passphraseRef"),
            holder.get("passwordRef"),
            holder.get("sudoPasswordRef"),
        ):
            if ref and ref.get("name"):
                names.add(ref["name"])
        known = ((holder.get("hostKeyPolicy") or {}).get("knownHostsRef")) or {}
        if known.get("name"):  # a Secret or a ConfigMap: both wake the machine when they change
            names.add(known["name"])
    return [f"{namespace}/{n}" for n in sorted(names)]


def _deleting_for(rm: JSONDict) -> float:
    """Seconds since the object's deletion began (0 if not deleting or unparsable)."""
    began = unix_time(rm["metadata"].get("deletionTimestamp"))
    return 0.0 if began is None else max(0.0, time.time() - began)


def _keep_true(rm: JSONDict, status: JSONDict, type_: str, reason: str) -> None:
    """Condition ``type_`` True: as it is if it already is (its reason and message stay, only a
    new generation is recorded), else with ``reason``."""
    current: JSONDict = next(
        (x for x in status.get("conditions", []) if x.get("type") == type_), {}
    )
    if current.get("status") == "True":
        mark(rm, status, type_, True, current.get("reason", reason), current.get("message", ""))
    else:
        mark(rm, status, type_, True, reason)


def _set_failure(status: JSONDict, error: str, message: str) -> None:
    """The v1beta1 contract's terminal failure (``error``: a Cluster API MachineStatusError such
    as CreateError or InvalidConfiguration), kept under ``status.deprecated.v1beta1``."""
    v1beta1 = status.setdefault("deprecated", {}).setdefault("v1beta1", {})
    v1beta1["failureReason"] = error
    v1beta1["failureMessage"] = message[:1024]


def _clear_failure(status: JSONDict) -> None:
    v1beta1 = (status.get("deprecated") or {}).get("v1beta1") or {}
    for field in ("failureReason", "failureMessage"):
        v1beta1.pop(field, None)
    if not v1beta1:
        status.get("deprecated", {}).pop("v1beta1", None)
    if not status.get("deprecated", True):
        status.pop("deprecated")


def _ipv4_or_none(address: str) -> str | None:
    try:
        return address if ipaddress.ip_address(address).version == 4 else None
    except ValueError:
        return None  # a DNS name


def _ready_reason(status: JSONDict) -> str:
    ready: JSONDict = next(
        (x for x in status.get("conditions", []) if x.get("type") == c.READY), {}
    )
    return str(ready.get("reason") or "")


def _backoff(attempts: int) -> float:
    return float(min(300, 10 * 2 ** max(0, attempts - 1)))


class RemoteMachineReconciler:
    def __init__(
        self,
        provider: Provider,
        informers: dict[str, Informer],
        secrets: ObjectSource,
        access: HostAccess,
        events: EventRecorder,
    ) -> None:
        self.client = provider.client
        self.machines: Store = informers["remote"].store
        self.capi_machines: Store = informers["machine"].store
        self.clusters: Store = informers["cluster"].store
        self.pooled: Store = informers["pooled"].store
        self.secrets = secrets
        self.access = access
        self.events = events
        self.jobs: HostJobs | None = None  # set by setup once the controller exists
        # spec.provisionJob mode; set by setup
        self.provision_jobs: provisionjob.ProvisionJobs | None = None
        self.workloads = WorkloadClients(secrets)
        self.own_writes = OwnWrites()
        # In memory on purpose: after a restart one early retry is harmless, and both are bounded.
        self._cleanup_attempts: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        # Machines whose success we recorded but the cache may not show yet: no second job.
        self._provisioned: set[str] = set()
        # uid -> (data Secret uid, its resourceVersion, generation) of bootstrap data found
        # invalid: parsed again only when one of them changes (hostile data can take seconds).
        self._invalid_inputs: dict[str, tuple[str, str, object]] = {}

    # -- entry -----------------------------------------------------------------------------

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        rm = self.machines.get_by_name(request.namespace, request.name)
        if rm is None:
            return Result()
        rm = self.own_writes.view(rm)
        if rm["metadata"].get("deletionTimestamp"):
            return await self._delete(rm, request)
        if FINALIZER not in rm["metadata"].get("finalizers", []):
            desired = copy.deepcopy(rm)
            desired["metadata"].setdefault("finalizers", []).append(FINALIZER)
            await self._write_object(rm, desired)
            return Result()  # the update event brings us back with the fresh object
        return await self._converge(rm, request)

    # -- normal path -----------------------------------------------------------------------

    async def _converge(self, rm: JSONDict, request: Request) -> Result:
        status = copy_status(rm)
        owner = owner_name(rm, CAPI_GROUP, "Machine")
        machine = self.capi_machines.get_by_name(request.namespace, owner) if owner else None
        if machine is None:
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_MACHINE_OWNER,
                "waiting for a Machine to own this RemoteMachine",
            )
        cluster_name = machine["metadata"].get("labels", {}).get(CLUSTER_NAME_LABEL) or (
            machine.get("spec", {}).get("clusterName")
        )
        cluster = self.clusters.get_by_name(request.namespace, cluster_name or "")
        if cluster is None:
            return await self._wait(
                rm, status, c.WAITING_FOR_CLUSTER, f"waiting for Cluster {cluster_name!r}"
            )
        if is_paused(rm, cluster):
            mark(rm, status, c.PAUSED, True, c.PAUSED_REASON, "reconciliation is paused")
            await self._write_status(rm, status)
            return Result()
        mark(rm, status, c.PAUSED, False, c.NOT_PAUSED)
        provisioned = bool((status.get("initialization") or {}).get("provisioned"))
        if provisioned and rm.get("spec", {}).get("providerID"):
            return await self._steady(rm, status, machine, cluster_name or "")
        infra = (cluster.get("status") or {}).get("initialization") or {}
        if not infra.get("infrastructureProvisioned"):
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_CLUSTER_INFRASTRUCTURE,
                f"waiting for Cluster {cluster_name} infrastructure",
            )
        spec = rm.get("spec", {})
        if spec.get("pool") and not spec.get("address"):
            return await self._claim(rm, status, machine)
        data_name = (machine.get("spec", {}).get("bootstrap") or {}).get("dataSecretName")
        if not data_name:
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_BOOTSTRAP_DATA,
                "waiting for the bootstrap provider's data secret",
            )
        data_secret = self.secrets.get(request.namespace, data_name)
        if data_secret is None:
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_BOOTSTRAP_DATA,
                f"waiting for bootstrap data Secret {data_name}",
            )
        return await self._provision(rm, status, machine, data_secret, request)

    async def _wait(self, rm: JSONDict, status: JSONDict, reason: str, message: str) -> Result:
        mark(rm, status, c.READY, False, reason, message)
        status["phase"] = "Pending"
        await self._write_status(rm, status)
        return Result()

    async def _steady(
        self, rm: JSONDict, status: JSONDict, machine: JSONDict, cluster: str
    ) -> Result:
        """Provisioned: keep the conditions true (never decaying to Unknown), and make sure the
        host's Node carries our providerID so Cluster API can link it to the Machine."""
        self._provisioned.discard(rm["metadata"]["uid"])
        _keep_true(rm, status, c.READY, c.PROVISIONED)
        _keep_true(rm, status, c.BOOTSTRAP_SUCCEEDED, c.PROVISIONED)
        status["phase"] = "Provisioned"
        await self._write_status(rm, status)
        if (machine.get("status") or {}).get("nodeRef"):
            return Result()
        return await self._link_node(rm, status, machine, cluster)

    async def _link_node(
        self, rm: JSONDict, status: JSONDict, machine: JSONDict, cluster: str
    ) -> Result:
        """The Node may register without a providerID (no cloud provider on remote hosts):
        set ours on it. Nodes are in the workload cluster, which we do not watch: look again
        every little while until Cluster API reports the Machine's nodeRef."""
        client = await self.workloads.get(rm["metadata"]["namespace"], cluster)
        if client is None:
            return Result(requeue_after=NODE_LINK_INTERVAL)
        recorded = status.get("addresses") or []
        names = [a["address"] for a in recorded if a.get("type") == "Hostname"]
        names.append(machine["metadata"]["name"])
        addresses = {
            a["address"] for a in recorded if a.get("type") in ("InternalIP", "ExternalIP")
        }
        try:
            outcome = await link_node(client, names, addresses, rm["spec"]["providerID"])
        except (ApiError, OSError, TimeoutError) as error:
            _log.debug("workload cluster not reachable yet", cluster=cluster, error=str(error))
            return Result(requeue_after=NODE_LINK_INTERVAL)
        if outcome == "linked":
            self.events.record(rm, "Normal", "NodeLinked", "set the Node's providerID")
        elif outcome.startswith("conflict"):
            self.events.record(
                rm,
                "Warning",
                "ProviderIDConflict",
                f"the Node of this host already has providerID {outcome.partition(': ')[2]}",
            )
        return Result(requeue_after=NODE_LINK_INTERVAL)

    async def _claim(self, rm: JSONDict, status: JSONDict, machine: JSONDict) -> Result:
        pooled = await pools.find_or_claim(self.client, self.pooled, rm)
        if pooled is None:
            pool = rm["spec"]["pool"]
            return await self._wait(
                rm,
                status,
                c.WAITING_FOR_POOL_MACHINE,
                f"no free PooledRemoteMachine in pool {pool!r}; add one and this machine proceeds",
            )
        host = pooled["spec"]["machine"]
        desired = copy.deepcopy(rm)
        # The pooled host says how to reach it (port, user, key...): its fields win over the
        # defaults the template-made RemoteMachine got from the CRD, as in the reference.
        desired["spec"].update(copy.deepcopy(host))
        meta = desired["metadata"]
        for field in ("labels", "annotations"):
            extra = pooled["metadata"].get(field) or {}
            merged = {k: v for k, v in extra.items() if k != pools.RECHECK_ANNOTATION}
            merged.update(meta.get(field) or {})
            if merged:
                meta[field] = merged
        try:
            await self._write_object(rm, desired)
        except Conflict:
            await self._unclaim_if_bound_elsewhere(rm, pooled)
            raise
        await self._propagate_to_machine(machine, pooled)
        self.events.record(
            rm,
            "Normal",
            "Claimed",
            f"claimed PooledRemoteMachine {pooled['metadata']['name']} ({host['address']})",
        )
        return Result()

    async def _unclaim_if_bound_elsewhere(self, rm: JSONDict, pooled: JSONDict) -> None:
        """Our write of the host into the RemoteMachine lost a race: if the winner (another
        controller replica) bound it to another host, the host we claimed is nobody's."""
        meta = rm["metadata"]
        try:
            fresh = await self.client.get(REMOTE_MACHINES, meta["namespace"], meta["name"])
        except ApiError as error:
            if not error.not_found:
                raise
            fresh = None
        address = (fresh or {}).get("spec", {}).get("address")
        if fresh is None or (address and address != pooled["spec"]["machine"]["address"]):
            await pools.release(
                self.client, meta["namespace"], pooled["metadata"]["name"], meta["name"]
            )

    async def _propagate_to_machine(self, machine: JSONDict, pooled: JSONDict) -> None:
        labels = {
            k: v
            for k, v in (pooled["metadata"].get("labels") or {}).items()
            if not k.startswith("cluster.x-k8s.io/")
        }
        if not labels or all(
            machine["metadata"].get("labels", {}).get(k) == v for k, v in labels.items()
        ):
            return
        meta = machine["metadata"]
        await self.client.patch(
            MACHINES, meta["namespace"], meta["name"], {"metadata": {"labels": labels}}
        )

    async def _provision(
        self,
        rm: JSONDict,
        status: JSONDict,
        machine: JSONDict,
        data_secret: JSONDict,
        request: Request,
    ) -> Result:
        jobs = self.jobs
        assert jobs is not None
        uid = rm["metadata"]["uid"]
        generation = rm["metadata"].get("generation")
        if uid in self._provisioned:
            return Result()  # our "provisioned" write is on its way to the cache
        if rm["spec"].get("provisionJob") and self.provision_jobs is not None:
            # A Job runs the bootstrap and status follows it (reconcilers/provisionjob.py).
            pid = provider_id(rm["spec"]["address"], int(rm["spec"].get("port", 22)))
            return await self.provision_jobs.provision(
                rm, status, machine, data_secret, request, pid
            )
        job = jobs.state(uid)
        if job is not None and job.kind == "provision" and not job.running:
            return await self._record_outcome(rm, status, job, request)
        if job is not None:
            return await self._progress(rm, status, job)
        bootstrap = status.get("bootstrap") or {}
        attempts = int(bootstrap.get("attempts") or 0)
        # Only outcomes write BootstrapExecSucceeded: its generation says which spec failed.
        outcome: JSONDict = next(
            (x for x in status.get("conditions", []) if x.get("type") == c.BOOTSTRAP_SUCCEEDED),
            {},
        )
        if attempts and outcome.get("observedGeneration") not in (None, generation):
            attempts = 0  # the spec changed since the last failure: a fresh budget
            self._retry_at.pop(uid, None)
        max_attempts = int(rm["spec"].get("maxAttempts") or DEFAULT_MAX_ATTEMPTS)
        # Status says a job was running, yet this process has none: the controller that ran it
        # died. Its attempt had no outcome, so the next job resumes it (the host's markers make
        # that exactly-once) instead of spending another attempt on the host.
        # So does a job that found the host locked: nothing ran.
        resuming = status.get("phase") == "Provisioning" and _ready_reason(status) in (
            c.PROVISIONING,
            c.HOST_LOCKED,
        )
        if attempts >= max_attempts and not resuming:
            return Result()  # terminal until the spec changes (a new generation resets it)
        wait = self._retry_at.get(uid, 0.0) - time.monotonic()
        if wait > 0:
            return Result(requeue_after=wait)  # back off between attempts
        spec = rm["spec"]
        pid = provider_id(spec["address"], int(spec.get("port", 22)))
        secret_meta = data_secret["metadata"]
        inputs = (secret_meta.get("uid", ""), secret_meta.get("resourceVersion", ""), generation)
        if self._invalid_inputs.get(uid) == inputs and status.get("phase") == "Failed":
            return Result()  # the same data, already reported invalid
        try:
            # In a thread: a slow parse must not stall every other reconcile on the event loop.
            plan = await asyncio.to_thread(self._plan, rm, machine, data_secret, pid)
        except BootstrapParseError as error:
            self._invalid_inputs[uid] = inputs
            mark(
                rm,
                status,
                c.READY,
                False,
                c.INVALID_BOOTSTRAP_DATA,
                f"{error.key}: {error.message}",
            )
            status["phase"] = "Failed"
            _set_failure(status, "InvalidConfiguration", f"{error.key}: {error.message}")
            await self._write_status(rm, status)
            self.events.record(
                rm, "Warning", c.INVALID_BOOTSTRAP_DATA, f"{error.key}: {error.message}"
            )
            return Result()
        try:
            target = self.access.target(rm)
        except NotYetKnown:
            return Result(requeue_after=NOT_YET_KNOWN_RETRY)  # its watch is listing
        except MissingSecret as missing:
            return await self._wait(rm, status, c.WAITING_FOR_SECRET, str(missing))
        except ValueError as invalid:
            return await self._wait(rm, status, c.INVALID_SSH_KEY, str(invalid))
        if plan.warnings:
            self.events.record(rm, "Warning", c.BOOTSTRAP_WARNINGS, "; ".join(plan.warnings))
        deadlines = Deadlines.of(spec)
        attempt = attempts if resuming and attempts else attempts + 1
        jobs.start(
            uid,
            "provision",
            request,
            lambda job: self.access.provision(target, plan, uid, job, jobs, deadlines),
        ).attempt = attempt
        status["bootstrap"] = {
            **bootstrap,
            "attempts": attempt,
            "stepsTotal": len(plan.steps),
            "stepsDone": 0,
        }
        mark(
            rm,
            status,
            c.READY,
            False,
            c.PROVISIONING,
            f"attempt {attempt} of {max_attempts}: connecting to {spec['address']}",
        )
        status["phase"] = "Provisioning"
        _clear_failure(status)  # a fresh budget (a new generation) is not failed yet
        await self._write_status(rm, status)
        self.events.record(
            rm,
            "Normal",
            c.PROVISIONING,
            f"bootstrapping {spec['address']} ({len(plan.steps)} steps, attempt {attempt})",
        )
        return Result()

    def _plan(self, rm: JSONDict, machine: JSONDict, secret: JSONDict, pid: str) -> BootstrapPlan:
        data = base64.b64decode((secret.get("data") or {}).get("value", ""))
        if not data:
            raise BootstrapParseError("value", "the bootstrap data Secret has no 'value' key")
        fmt_raw = (secret.get("data") or {}).get("format")
        try:
            fmt = base64.b64decode(fmt_raw).decode() if fmt_raw else None
        except UnicodeDecodeError:
            raise BootstrapParseError("format", "the 'format' key is not UTF-8 text") from None
        data = substitute_provider_id(data, pid)
        meta = rm["metadata"]
        hostname = machine["metadata"]["name"]
        metadata = InstanceMetadata(
            instance_id=meta["uid"],
            local_hostname=hostname,
            hostname=hostname,
            local_ipv4=_ipv4_or_none(rm["spec"]["address"]),
        )
        return parse_bootstrap(
            data,
            fmt,
            metadata=metadata,
            commands_as_script=bool(rm["spec"].get("commandsAsScript")),
        )

    async def _progress(self, rm: JSONDict, status: JSONDict, job: JobState) -> Result:
        if not job.step:
            return Result()  # still connecting, as the status written at the start says
        bootstrap = dict(status.get("bootstrap") or {})
        bootstrap.update(
            stepsDone=job.steps_done, stepsTotal=job.steps_total or bootstrap.get("stepsTotal", 0)
        )
        if job.attempt:
            bootstrap["attempts"] = job.attempt
        status["bootstrap"] = bootstrap
        message = f"step {job.steps_done + 1} of {job.steps_total}: {job.step}"
        mark(rm, status, c.READY, False, c.PROVISIONING, message)
        await self._write_status(rm, status)
        return Result()

    async def _record_outcome(
        self, rm: JSONDict, status: JSONDict, job: JobState, request: Request
    ) -> Result:
        assert self.jobs is not None and job.outcome is not None
        outcome = job.outcome
        uid = rm["metadata"]["uid"]
        spec = rm["spec"]
        if outcome.ok:
            self._retry_at.pop(uid, None)
            pid = provider_id(spec["address"], int(spec.get("port", 22)))
            desired = copy.deepcopy(rm)
            desired["spec"]["providerID"] = pid
            seen = {
                "hostKeyFingerprint": outcome.details.get("fingerprint"),
                "bastionHostKeyFingerprint": outcome.details.get("bastionFingerprint"),
            }
            pins = pools.first_use_pins(rm, spec, seen)
            if pins:  # pin what we trusted on first use where clusterctl move keeps it
                desired["metadata"].setdefault("annotations", {}).update(pins)
            rm = await self._write_object(rm, desired)
            status["addresses"] = outcome.details.get("addresses") or [
                {"type": "ExternalIP", "address": spec["address"]}
            ]
            status["initialization"] = {"provisioned": True}
            status["bootstrap"] = {
                **(status.get("bootstrap") or {}),
                "stepsDone": job.steps_total,
                "lastOutputTail": None,
            }
            if job.attempt:
                status["bootstrap"]["attempts"] = job.attempt
            status["bootstrap"] = {k: v for k, v in status["bootstrap"].items() if v is not None}
            if outcome.details.get("fingerprint"):
                status["hostKeyFingerprint"] = outcome.details["fingerprint"]
            mark(rm, status, c.BOOTSTRAP_SUCCEEDED, True, outcome.reason, "")
            mark(rm, status, c.READY, True, c.PROVISIONED, outcome.message)
            # The providerID patch made a new generation: record it on every condition now,
            # not in a write of its own on the next reconcile.
            mark(rm, status, c.PAUSED, False, c.NOT_PAUSED)
            status["phase"] = "Provisioned"
            _clear_failure(status)
            await self._write_status(rm, status)
            self.events.record(
                rm, "Normal", c.PROVISIONED, outcome.message or f"{spec['address']} bootstrapped"
            )
            self._provisioned.add(uid)
            self.jobs.forget(uid)
            return Result()
        if outcome.reason == c.HOST_LOCKED:
            return await self._wait_for_lock(rm, status, job, outcome)
        bootstrap = dict(status.get("bootstrap") or {})
        attempts = job.attempt or int(bootstrap.get("attempts") or 1)
        bootstrap["attempts"] = attempts
        max_attempts = int(spec.get("maxAttempts") or DEFAULT_MAX_ATTEMPTS)
        bootstrap["lastOutputTail"] = outcome.output_tail[-1024:] if outcome.output_tail else None
        status["bootstrap"] = {k: v for k, v in bootstrap.items() if v is not None}
        terminal = not outcome.retryable or attempts >= max_attempts
        reason = outcome.reason
        message = outcome.message
        if outcome.retryable and attempts >= max_attempts:
            message = f"{message} (gave up after {attempts} attempts)"
        mark(rm, status, c.BOOTSTRAP_SUCCEEDED, False, reason, message)
        mark(rm, status, c.READY, False, reason, message)
        status["phase"] = "Failed" if terminal else "Provisioning"
        if terminal:
            status["bootstrap"]["attempts"] = max(attempts, max_attempts)
            _set_failure(status, "CreateError", f"{reason}: {message}")
        await self._write_status(rm, status)
        self.events.record(rm, "Warning", reason, message)
        self.jobs.forget(uid)
        delay = _backoff(attempts)
        # Also after a terminal failure: until the cache shows it, a stale "Provisioning" status
        # must not look like a crashed job to resume.
        self._retry_at[uid] = time.monotonic() + delay
        if terminal:
            return Result()
        return Result(requeue_after=delay)

    async def _wait_for_lock(
        self, rm: JSONDict, status: JSONDict, job: JobState, outcome: Outcome
    ) -> Result:
        """Another job's lock is not a failure of this bootstrap: nothing ran. The holder is a
        live controller that will release it, or a dead one whose lock goes stale once its
        heartbeat stops; either way the attempt is kept for the next job (a machine whose
        controller is replaced several times must not use up its budget waiting)."""
        assert self.jobs is not None
        uid = rm["metadata"]["uid"]
        self.jobs.forget(uid)
        stale_after = self.access.runner.settings.lock_stale_after
        age = outcome.details.get("lockAgeSeconds")
        # Look again once the lock would be stale, or sooner: a live holder may release it.
        delay = LOCK_RETRY if age is None else max(1.0, min(LOCK_RETRY, stale_after - age + 1.0))
        if job.attempt:
            status["bootstrap"] = {**(status.get("bootstrap") or {}), "attempts": job.attempt}
        holder = outcome.details.get("lockOwner") or "another job"
        message = (
            f"{rm['spec']['address']} is locked by {holder}; waiting until it is released or"
            f" its heartbeat is {stale_after} s old"
        )
        was_waiting = _ready_reason(status) == c.HOST_LOCKED
        mark(rm, status, c.READY, False, c.HOST_LOCKED, message)
        status["phase"] = "Provisioning"
        await self._write_status(rm, status)
        if not was_waiting:
            self.events.record(rm, "Warning", c.HOST_LOCKED, message)
        self._retry_at[uid] = time.monotonic() + delay
        return Result(requeue_after=delay)

    # -- deletion --------------------------------------------------------------------------

    async def _delete(self, rm: JSONDict, request: Request) -> Result:
        assert self.jobs is not None
        meta = rm["metadata"]
        uid = meta["uid"]
        if FINALIZER not in meta.get("finalizers", []):
            return Result()
        job = self.jobs.state(uid)
        if job is not None and job.kind == "provision":
            await self.jobs.cancel(uid)
            self.jobs.forget(uid)
            job = None
        if rm["spec"].get("provisionJob") and self.provision_jobs is not None:
            # Its Jobs and Secrets go first; the host cleanup below stays on the runner.
            pods_going = await self.provision_jobs.delete(rm)
            if pods_going is not None:
                return Result(requeue_after=pods_going)
        if uid not in self._cleanup_attempts:
            self._retry_at.pop(uid, None)  # a bootstrap's backoff does not delay the cleanup
        forced = FORCE_RELEASE_ANNOTATION in meta.get("annotations", {})
        touched = bool((rm.get("status") or {}).get("bootstrap"))
        if touched and rm["spec"].get("address") and not forced:
            pending = await self._cleanup(rm, request, job)
            if pending is not None:
                return pending
        self._cleanup_attempts.pop(uid, None)
        self._provisioned.discard(uid)
        self._retry_at.pop(uid, None)
        self._invalid_inputs.pop(uid, None)
        claimed = self.pooled.by_index(
            pools.CLAIM_INDEX, pools.claimant_key(meta["namespace"], meta["name"])
        )
        for pooled in claimed:
            await pools.release(
                self.client, meta["namespace"], pooled["metadata"]["name"], meta["name"]
            )
        desired = copy.deepcopy(rm)
        desired["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != FINALIZER]
        try:
            await self._write_object(rm, desired)
        except ApiError as error:
            if not error.not_found:
                raise
        self.own_writes.forget(uid)
        self.events.record(rm, "Normal", "Released", "host cleaned up and released")
        return Result()

    async def _write_status(self, rm: JSONDict, status: JSONDict) -> JSONDict:
        """patch_status, remembered so the next reconcile does not read around it."""
        written = await patch_status(self.client, REMOTE_MACHINES, rm, status)
        return self.own_writes.note(rm, written)

    async def _write_object(self, rm: JSONDict, desired: JSONDict) -> JSONDict:
        """patch_object (metadata, spec), remembered like :meth:`_write_status`."""
        return self.own_writes.note(
            rm, await patch_object(self.client, REMOTE_MACHINES, rm, desired)
        )

    async def _still_holds_host(self, rm: JSONDict) -> bool:
        """Ask the API server, not the cache, before a cleanup: a cached copy can still show the
        finalizer of a machine whose host was already cleaned, released and maybe claimed and
        bootstrapped by the next machine, which a second cleanup would wipe."""
        meta = rm["metadata"]
        try:
            fresh = await self.client.get(REMOTE_MACHINES, meta["namespace"], meta["name"])
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return fresh["metadata"].get("uid") == meta["uid"] and FINALIZER in (
            fresh["metadata"].get("finalizers") or []
        )

    async def _cleanup(self, rm: JSONDict, request: Request, job: JobState | None) -> Result | None:
        """Run the cleanup job. None once it succeeded or was given up on (with a reason);
        otherwise the Result to return meanwhile. Failed attempts back off, so a host still
        busy with a just-cancelled bootstrap step is not declared dirty within a second."""
        assert self.jobs is not None
        uid = rm["metadata"]["uid"]
        status = copy_status(rm)
        wait = self._retry_at.get(uid, 0.0) - time.monotonic()
        if job is None and wait > 0:
            return Result(requeue_after=wait)
        if job is None:
            if not await self._still_holds_host(rm):
                return Result()  # a stale cache: the host was cleaned and released already
            try:
                target = self.access.target(rm)
            except NotYetKnown:
                # After a restart the key's watch may not have listed yet: absent is not known,
                # and skipping the cleanup would hand a dirty host to the next machine.
                return Result(requeue_after=NOT_YET_KNOWN_RETRY)
            except (MissingSecret, ValueError) as missing:
                self.events.record(
                    rm, "Warning", c.CLEANUP_FAILED, f"skipping host cleanup: {missing}"
                )
                return None
            commands = cleanup_commands(rm, self._bootstrap_kind(rm))
            deadlines = Deadlines.of(rm["spec"])
            self.jobs.start(
                uid,
                "cleanup",
                request,
                lambda job: self.access.cleanup(target, commands, uid, job, deadlines),
            )
            mark(rm, status, c.READY, False, c.DELETING, "cleaning up the host")
            status["phase"] = "Deleting"
            await self._write_status(rm, status)
            return Result()
        if job.running:
            return Result()
        assert job.outcome is not None
        self.jobs.forget(uid)
        if job.outcome.ok:
            return None
        if job.outcome.reason == c.HOST_LOCKED and _deleting_for(rm) < CLEANUP_LOCK_PATIENCE:
            # A live job still holds the host (e.g. a cancelled bootstrap's step, or a
            # provisionJob Pod's session winding down): wait for it without spending an attempt.
            message = f"waiting for the host to be free: {job.outcome.message}"
            mark(rm, status, c.READY, False, c.DELETING, message)
            await self._write_status(rm, status)
            return Result(requeue_after=LOCK_RETRY)
        attempts = self._cleanup_attempts.get(uid, 0) + 1
        self._cleanup_attempts[uid] = attempts
        message = f"cleanup attempt {attempts} of {CLEANUP_ATTEMPTS} failed: {job.outcome.message}"
        self.events.record(rm, "Warning", c.CLEANUP_FAILED, message)
        if attempts >= CLEANUP_ATTEMPTS:
            return None
        delay = _backoff(attempts)
        self._retry_at[uid] = time.monotonic() + delay
        mark(rm, status, c.READY, False, c.CLEANUP_FAILED, message)
        await self._write_status(rm, status)
        return Result(requeue_after=delay)

    def _bootstrap_kind(self, rm: JSONDict) -> str:
        name = owner_name(rm, CAPI_GROUP, "Machine")
        machine = self.capi_machines.get_by_name(rm["metadata"]["namespace"], name or "")
        ref = ((machine or {}).get("spec", {}).get("bootstrap") or {}).get("configRef") or {}
        return str(ref.get("kind") or "")


def setup(provider: Provider, runner: Runner) -> HostAccess:
    """Register the RemoteMachine controller; returns the HostAccess it built (pools probe
    through it too)."""
    manager = provider.manager
    remote = manager.informer(REMOTE_MACHINES)
    remote.store.add_indexer(SECRET_REF_INDEX, referenced_secrets)
    capi_machines = manager.informer(MACHINES)
    capi_machines.store.add_indexer(
        DATA_SECRET_INDEX,
        lambda m: (
            [f"{m['metadata'].get('namespace', '')}/{n}"]
            if (n := (m.get("spec", {}).get("bootstrap") or {}).get("dataSecretName"))
            else []
        ),
    )
    capi_machines.store.add_indexer(
        CLUSTER_INDEX,
        lambda m: (
            [f"{m['metadata'].get('namespace', '')}/{name}"]
            if (name := m["metadata"].get("labels", {}).get(CLUSTER_NAME_LABEL))
            else []
        ),
    )
    informers = {
        "remote": remote,
        "machine": capi_machines,
        "cluster": manager.informer(CLUSTERS),
        "pooled": pools.pool_informer(provider),
    }
    controller_box: list[Controller] = []

    def on_referenced_object(event: Event) -> None:
        if not controller_box:
            return
        key = f"{event.obj['metadata'].get('namespace', '')}/{event.obj['metadata']['name']}"
        for rm in remote.store.by_index(SECRET_REF_INDEX, key):
            controller_box[0].enqueue(request_for(rm))
        for machine in capi_machines.store.by_index(DATA_SECRET_INDEX, key):
            for req in _machine_to_remote(machine):
                controller_box[0].enqueue(req)

    secrets = ObjectSource(
        manager,
        SECRETS,
        on_referenced_object,
        shared_selector=Selector(field_selector=f"type={BOOTSTRAP_SECRET_TYPE}"),
    )
    configmaps = ObjectSource(manager, CONFIGMAPS, on_referenced_object)
    access = HostAccess(runner, secrets, configmaps)
    reconciler = RemoteMachineReconciler(provider, informers, secrets, access, manager.events)
    provider.on_close.append(reconciler.workloads.close)
    controller = manager.add(
        Controller(
            "remotemachine",
            reconciler,
            workers=provider.options.machine_workers,
            metrics=manager.metrics,
        )
    )
    controller_box.append(controller)
    reconciler.jobs = HostJobs(controller.enqueue_threadsafe)
    reconciler.provision_jobs = provisionjob.setup(
        provider, controller, access, manager.events, reconciler._plan, reconciler._record_outcome
    )
    manager.watch(controller, REMOTE_MACHINES, own_object)
    manager.watch(controller, MACHINES, lambda e: _machine_to_remote(e.obj))

    def cluster_to_remote(event: Event) -> list[Request]:
        meta = event.obj["metadata"]
        key = f"{meta.get('namespace', '')}/{meta['name']}"
        return [
            request
            for machine in capi_machines.store.by_index(CLUSTER_INDEX, key)
            for request in _machine_to_remote(machine)
        ]

    manager.watch(controller, CLUSTERS, cluster_to_remote)

    def free_host_to_waiting(event: Event) -> list[Request]:
        if not pools.is_free(event.obj):
            return []
        namespace = event.obj["metadata"].get("namespace", "")
        pool = event.obj.get("spec", {}).get("pool")
        return [
            request_for(rm)
            for rm in remote.store.values()
            if rm["metadata"].get("namespace") == namespace
            and rm.get("spec", {}).get("pool") == pool
            and not rm["spec"].get("address")
        ]

    manager.watch(controller, POOLED_REMOTE_MACHINES, free_host_to_waiting)
    return access


def _machine_to_remote(machine: JSONDict) -> list[Request]:
    ref = machine.get("spec", {}).get("infrastructureRef") or {}
    if ref.get("kind") != "RemoteMachine":
        return []
    return [Request(machine["metadata"].get("namespace", ""), str(ref["name"]))]
