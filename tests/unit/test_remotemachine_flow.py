"""The RemoteMachine provisioning flow without a cluster: a scripted backend behind the backend
protocol, a writer that keeps the object in memory, and the flow's own policy and memory."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import attrs
import pytest
import structlog
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from capi_remote import Request, Result
from capi_remote.api import PROVIDER_ID_SET_FOR_ANNOTATION, RemoteMachineSpec, from_dict
from capi_remote.bootstrap import BootstrapPlan, InstanceMetadata, parse_bootstrap
from capi_remote.ssh import InvalidCredentials
from reconcilers import conditions as c
from reconcilers.common import copy_status
from reconcilers.hostjobs import Outcome
from reconcilers.remote import InvalidSpec, MissingSecret
from reconcilers.remotemachine.backend import (
    Finished,
    Machine,
    NotReady,
    Observation,
    Running,
    Started,
)
from reconcilers.remotemachine.machinestatus import FINALIZER
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.policy import AttemptPolicy
from reconcilers.remotemachine.provision import ProvisionFlow

JSONDict = dict[str, Any]
LOG = structlog.get_logger("test")
UID = "uid-1"


class FakeWriter:
    """The API server's copy of one RemoteMachine, written only through the Writer protocol."""

    def __init__(self, obj: JSONDict) -> None:
        self.obj = obj
        self.events: list[tuple[str, str, str]] = []
        self.status_writes = 0

    def view(self, cached: JSONDict) -> JSONDict:
        return cached

    async def status(self, rm: JSONDict, status: JSONDict) -> bool:
        if self.obj.get("status", {}) == status:
            return False
        self.obj["status"] = copy.deepcopy(status)
        self.status_writes += 1
        return True

    async def object(self, rm: JSONDict, desired: JSONDict) -> JSONDict:
        if desired["spec"] != self.obj["spec"]:
            self.obj["metadata"]["generation"] += 1
        self.obj["spec"] = copy.deepcopy(desired["spec"])
        for field in ("annotations", "finalizers"):
            if field in desired["metadata"]:
                self.obj["metadata"][field] = copy.deepcopy(desired["metadata"][field])
        return copy.deepcopy(self.obj)

    def event(self, rm: JSONDict, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def forget(self, uid: str) -> None:
        pass

    @property
    def status_(self) -> JSONDict:
        status: JSONDict = self.obj["status"]
        return status

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


@attrs.define
class FakeBackend:
    """Reports ``seen``; records starts and settles; raises ``refuse`` on start if set."""

    failed_reason: str | None = None
    lock_stale_after: int | None = None
    keeps_attempts: bool = False
    seen: Observation = None
    refuse: Exception | None = None
    starts: list[int] = attrs.field(factory=list)
    settled: list[int] = attrs.field(factory=list)
    cancelled: int = 0
    retired: int = 0
    generation: int | None = None  # of the last start

    async def observe(self, machine: Machine) -> Observation:
        return self.seen

    async def start(
        self, machine: Machine, plan: BootstrapPlan, attempt: int, provider_id: str
    ) -> Started:
        if self.refuse is not None:
            raise self.refuse
        self.starts.append(attempt)
        self.generation = machine.generation
        self.seen = Running(attempt, c.PROVISIONING, f"attempt {attempt}: connecting")
        return Started(c.PROVISIONING, f"attempt {attempt}", f"started {attempt}")

    async def settle(self, machine: Machine, finished: Finished) -> None:
        self.settled.append(finished.attempt)
        if self.failed_reason is None:  # the runner forgets its job; a Job stays in the API
            self.seen = None

    async def record_pins(self, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
        return seen  # every key seen is pinned as it is

    async def cancel(self, rm: JSONDict) -> float | None:
        self.cancelled += 1
        return None

    async def retire(self, rm: JSONDict) -> None:
        self.retired += 1


def runner_like() -> FakeBackend:
    return FakeBackend(lock_stale_after=60)


def job_like() -> FakeBackend:
    return FakeBackend(failed_reason=c.PROVISIONING_JOB_FAILED, keeps_attempts=True)


def new_machine(**spec: Any) -> JSONDict:
    """A machine as its first start leaves its metadata and spec (the record: our finalizer and
    providerID, :func:`test_the_record_is_written_before_the_host_is_touched`)."""
    return {
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": UID,
            "generation": 1,
            "resourceVersion": "1",
            "finalizers": [FINALIZER],
            "annotations": {PROVIDER_ID_SET_FOR_ANNOTATION: UID},
        },
        "spec": {
            "address": "192.0.2.10",
            "port": 22,
            "providerID": "remote-machine://192.0.2.10:22",
            **spec,
        },
        "status": {},
    }


def data_secret(
    text: str = "#cloud-config\nruncmd:\n- echo hello\n", version: str = "1"
) -> JSONDict:
    return {
        "metadata": {"name": "data", "uid": "secret-uid", "resourceVersion": version},
        "data": {"value": base64.b64encode(text.encode()).decode()},
    }


class CountingParser:
    """parse_bootstrap in process, counted (the controller parses in its ParseSandbox)."""

    def __init__(self) -> None:
        self.parses = 0
        self.tenants: list[str] = []

    async def parse(
        self,
        data: bytes,
        format: str | None,
        *,
        metadata: InstanceMetadata,
        commands_as_script: bool = False,
        tenant: str = "",
    ) -> BootstrapPlan:
        self.parses += 1
        self.tenants.append(tenant)
        return parse_bootstrap(
            data, format, metadata=metadata, commands_as_script=commands_as_script
        )


@attrs.define
class Bed:
    writer: FakeWriter
    backend: FakeBackend
    memory: MachineMemory = attrs.field(factory=MachineMemory)
    parser: CountingParser = attrs.field(factory=CountingParser)
    secret: JSONDict = attrs.field(factory=data_secret)

    @property
    def flow(self) -> ProvisionFlow:
        return ProvisionFlow(self.writer, self.memory, AttemptPolicy(), self.parser)

    @property
    def status(self) -> JSONDict:
        status: JSONDict = self.writer.obj["status"]
        return status

    def ready(self) -> JSONDict:
        return next(x for x in self.status["conditions"] if x["type"] == c.READY)

    async def step(self) -> Result:
        rm = copy.deepcopy(self.writer.obj)
        spec = from_dict(RemoteMachineSpec, rm["spec"])
        machine = Machine(rm, spec, {"metadata": {"name": "m"}}, Request("ns", "m"), LOG)
        return await self.flow.step(self.backend, machine, copy_status(rm), self.secret)

    def time_passes(self) -> None:
        self.memory[UID].retry_at = 0.0
        self.memory[UID].progress_due = 0.0

    async def fail(
        self, attempt: int, reason: str = "HostUnreachable", retry: bool = True
    ) -> Result:
        self.backend.seen = Finished(attempt, 1, Outcome(False, reason, "it broke", retry))
        return await self.step()


def bed(backend: FakeBackend | None = None, **spec: Any) -> Bed:
    return Bed(FakeWriter(new_machine(**spec)), backend or runner_like())


BACKENDS = [pytest.param(runner_like, id="runner"), pytest.param(job_like, id="job")]


async def test_success_records_provider_id_and_attempt() -> None:
    b = bed()
    assert await b.step() == Result(requeue_after=AttemptPolicy().first_progress)
    assert b.backend.starts == [1]
    assert b.parser.tenants == ["ns"]  # the parse takes the namespace's turn (fair admission)
    # The start writes no status, the Event says it; a quick bootstrap writes its outcome only.
    assert b.writer.status_writes == 0 and b.writer.events == [
        ("Normal", c.PROVISIONING, "started 1")
    ]
    b.backend.seen = Finished(1, 1, Outcome(True, c.PROVISIONED, "done"), steps_total=1)
    assert await b.step() == Result()
    assert b.writer.status_writes == 1
    assert b.writer.obj["spec"]["providerID"] == "remote-machine://192.0.2.10:22"
    assert b.status["phase"] == "Provisioned"
    assert b.status["initialization"] == {"provisioned": True}
    assert b.status["bootstrap"] == {"attempts": 1, "stepsTotal": 1, "stepsDone": 1}
    assert b.backend.settled == [1]
    # Until the cache shows the success, no second attempt starts.
    b.backend.seen = None
    await b.step()
    assert b.backend.starts == [1]


@pytest.mark.parametrize("make", BACKENDS)
async def test_the_record_is_written_before_the_host_is_touched(make: Any) -> None:
    """A first start writes our finalizer with the providerID before the backend starts, and its
    attempt carries the generation that write made; a later attempt writes no record again."""
    recorded_at_start: list[JSONDict] = []

    @attrs.define
    class Watched(FakeBackend):
        async def start(
            self, machine: Machine, plan: BootstrapPlan, attempt: int, provider_id: str
        ) -> Started:
            recorded_at_start.append(copy.deepcopy(b.writer.obj))  # what the API holds
            return await super().start(machine, plan, attempt, provider_id)

    b = bed(Watched(**attrs.asdict(make(), recurse=False)))
    meta, spec = b.writer.obj["metadata"], b.writer.obj["spec"]
    del meta["finalizers"], meta["annotations"], spec["providerID"]
    await b.step()
    [before] = recorded_at_start
    assert before["metadata"]["finalizers"] == [FINALIZER]
    assert before["spec"]["providerID"] == "remote-machine://192.0.2.10:22"
    assert before["metadata"]["annotations"] == {PROVIDER_ID_SET_FOR_ANNOTATION: UID}
    assert b.backend.generation == before["metadata"]["generation"] == 2
    generation = b.writer.obj["metadata"]["generation"]
    b.backend.seen = Finished(1, 2, Outcome(False, "StepFailed", "it broke", True))
    await b.step()
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 2]  # the same spec: its failure counted, no fresh budget
    assert b.writer.obj["metadata"]["generation"] == generation


@pytest.mark.parametrize("make", BACKENDS)
async def test_retryable_failure_backs_off_then_retries(make: Any) -> None:
    b = bed(make())
    await b.step()
    result = await b.fail(1)
    assert result.requeue_after == 10.0
    assert b.status["phase"] == "Provisioning"
    assert b.status["bootstrap"]["attempts"] == 1
    ready = b.ready()
    assert ready["reason"] == (b.backend.failed_reason or "HostUnreachable")
    assert "(attempt 1 of 5; the next one starts 10s after the failure)" in ready["message"]
    assert "deprecated" not in b.status
    warnings = [e for e in b.writer.events if e[0] == "Warning"]
    assert len(warnings) == 1
    # The backoff holds the next attempt back (a Job's outcome is seen again: no new Event).
    waited = await b.step()
    assert waited.requeue_after is not None and 0 < waited.requeue_after <= 10.0
    assert b.backend.starts == [1]
    assert len([e for e in b.writer.events if e[0] == "Warning"]) == 1
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 2]
    b.time_passes()  # its first progress write is due
    await b.step()
    assert b.status["bootstrap"]["attempts"] == 2
    assert b.status["phase"] == "Provisioning" and b.ready()["message"] == "attempt 2: connecting"


@pytest.mark.parametrize("make", BACKENDS)
async def test_terminal_failure_on_the_first_try_reports_one_attempt(make: Any) -> None:
    b = bed(make())
    await b.step()
    assert await b.fail(1, c.HOST_KEY_MISMATCH, retry=False) == Result()
    assert b.status["phase"] == "Failed"
    assert b.status["bootstrap"]["attempts"] == 1
    failure = b.status["deprecated"]["v1beta1"]
    assert failure["failureReason"] == "CreateError"
    assert failure["failureMessage"].startswith("HostKeyMismatch: it broke")
    b.time_passes()
    for _ in range(2):
        assert await b.step() == Result()
    assert b.backend.starts == [1]


@pytest.mark.parametrize("make", BACKENDS)
async def test_gives_up_after_max_attempts(make: Any) -> None:
    b = bed(make(), maxAttempts=2)
    await b.step()
    await b.fail(1)
    b.time_passes()
    await b.step()
    assert await b.fail(2) == Result()
    assert b.status["phase"] == "Failed"
    assert b.ready()["message"] == "it broke (gave up after 2 attempts)"
    assert b.status["bootstrap"]["attempts"] == 2
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 2]


@pytest.mark.parametrize("make", BACKENDS)
async def test_a_spec_change_resets_the_budget(make: Any) -> None:
    b = bed(make())
    await b.step()
    await b.fail(1, c.HOST_KEY_MISMATCH, retry=False)
    b.writer.obj["metadata"]["generation"] = 2
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 1]
    assert b.status["phase"] == "Provisioning"
    assert "deprecated" not in b.status  # a fresh budget is not failed yet


async def test_resetting_attempts_to_zero_retries_a_terminal_failure() -> None:
    b = bed()
    await b.step()
    await b.fail(1, c.HOST_KEY_MISMATCH, retry=False)
    b.writer.obj["status"]["bootstrap"]["attempts"] = 0  # the documented manual retry
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 1]


@pytest.mark.parametrize("make", BACKENDS)
async def test_invalid_bootstrap_data_is_remembered(make: Any) -> None:
    b = bed(make())
    b.secret = data_secret("#cloud-config\nwrite_files: 7\n")
    await b.step()
    assert b.status["phase"] == "Failed"
    assert b.ready()["reason"] == c.INVALID_BOOTSTRAP_DATA
    assert b.status["deprecated"]["v1beta1"]["failureReason"] == "InvalidConfiguration"
    await b.step()
    assert b.parser.parses == 1  # the same Secret version: not parsed again
    assert b.writer.reasons() == [c.INVALID_BOOTSTRAP_DATA]
    b.secret = data_secret(version="2")
    await b.step()
    assert b.parser.parses == 2
    assert b.backend.starts == [1]


async def test_host_locked_waits_without_spending_an_attempt() -> None:
    b = bed()
    await b.step()
    locked = Outcome(False, c.HOST_LOCKED, "", True, details={"lockAgeSeconds": 55})
    b.backend.seen = Finished(1, 1, locked)
    result = await b.step()
    assert result.requeue_after == 6.0  # the lock is stale at 60 s
    assert b.ready()["reason"] == c.HOST_LOCKED
    assert b.status["phase"] == "Provisioning"
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 1]  # the same attempt again
    assert b.status["bootstrap"]["attempts"] == 1
    b.backend.seen = Finished(1, 1, locked)  # still locked: told again, not started at once
    assert await b.step() == Result(requeue_after=6.0)
    assert b.ready()["reason"] == c.HOST_LOCKED
    assert b.backend.starts == [1, 1]
    # One Warning for the holder, not one per look (each look starts a job that meets it).
    assert [e for e in b.writer.events if e[1] == c.HOST_LOCKED] == [
        ("Warning", c.HOST_LOCKED, b.ready()["message"])
    ]


async def test_resumes_the_running_attempt_after_a_restart() -> None:
    b = bed()
    await b.step()
    await b.fail(1)
    b.time_passes()
    await b.step()
    assert b.backend.starts == [1, 2]
    # The controller restarts: its memory and its runner's jobs are gone. Attempt 2 wrote
    # nothing yet (status says attempt 1 failed): it runs again as attempt 2.
    restarted = Bed(b.writer, runner_like())
    await restarted.step()
    assert restarted.backend.starts == [2]
    restarted.time_passes()
    await restarted.step()  # its progress written, and once more after a restart
    assert b.status["bootstrap"]["attempts"] == 2
    again = Bed(b.writer, runner_like())
    await again.step()
    assert again.backend.starts == [2]


async def test_progress_is_coalesced_and_the_latest_is_written() -> None:
    b = bed()
    interval = AttemptPolicy().progress_interval
    await b.step()
    b.backend.seen = Running(1, c.PROVISIONING, "step 2 of 3: x", steps_done=1, steps_total=3)
    early = await b.step()  # before the first write is due: none, but a look when it is
    assert b.writer.status_writes == 0
    first = AttemptPolicy().first_progress
    assert early.requeue_after is not None and interval < early.requeue_after <= first
    b.time_passes()
    assert await b.step() == Result()
    assert b.writer.status_writes == 1
    assert b.status["bootstrap"] == {"attempts": 1, "stepsDone": 1, "stepsTotal": 3}
    assert b.ready()["message"] == "step 2 of 3: x" and b.status["phase"] == "Provisioning"
    b.backend.seen = Running(1, c.PROVISIONING, "step 3 of 3: y", steps_done=2, steps_total=3)
    later = await b.step()  # one write per interval: this one waits for the next
    assert b.writer.status_writes == 1
    assert later.requeue_after is not None and interval - 1 < later.requeue_after <= interval
    b.time_passes()
    await b.step()
    assert b.writer.status_writes == 2 and b.ready()["message"] == "step 3 of 3: y"
    await b.step()  # nothing new: nothing written
    assert b.writer.status_writes == 2


async def test_a_backend_that_is_not_ready_is_asked_again() -> None:
    b = bed(job_like())
    b.backend.seen = NotReady(5.0)
    assert await b.step() == Result(requeue_after=5.0)
    assert b.backend.starts == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MissingSecret("Secret ns/key (key 'value') not found"), c.WAITING_FOR_SECRET),
        (InvalidCredentials("the private key is encrypted"), c.INVALID_SSH_KEY),
        (InvalidSpec(c.INVALID_SECRET_DATA, "not UTF-8"), c.INVALID_SECRET_DATA),
        (InvalidSpec(c.INVALID_HOST_KEY_POLICY, "bad fingerprint"), c.INVALID_HOST_KEY_POLICY),
    ],
)
async def test_inputs_that_cannot_be_used_wait_with_their_own_reason(
    error: Exception, reason: str
) -> None:
    b = bed()
    b.backend.refuse = error
    await b.step()
    assert b.ready()["reason"] == reason
    assert b.status["phase"] == "Pending"
    assert "bootstrap" not in b.status  # no attempt was spent
    b.backend.refuse = None  # fixed: the wait status goes with the first progress write
    result = await b.step()
    assert b.backend.starts == [1] and b.status["phase"] == "Pending"
    assert result == Result(requeue_after=AttemptPolicy().progress_interval)


async def test_deleting_the_last_failed_job_starts_afresh() -> None:
    b = bed(job_like())
    await b.step()
    await b.fail(1, c.HOST_KEY_MISMATCH, retry=False)
    await b.step()
    assert b.backend.starts == [1]
    b.backend.seen = None  # the user deleted the failed Job
    await b.step()
    assert b.backend.starts == [1, 1]


async def test_a_job_the_cache_does_not_show_yet_is_not_started_again() -> None:
    b = bed(job_like())
    await b.step()
    await b.fail(1)
    b.time_passes()
    await b.step()
    b.backend.seen = None  # the new Job is not in the informer's cache yet
    await b.step()
    assert b.backend.starts == [1, 2, 2]  # the same attempt (its create finds it exists)


async def test_a_failure_of_an_older_spec_starts_afresh() -> None:
    b = bed(job_like())
    await b.step()
    b.writer.obj["metadata"]["generation"] = 2
    await b.fail(1)  # the Job was made for generation 1
    assert b.backend.starts == [1, 1]
    assert c.PROVISIONING_JOB_FAILED not in b.writer.reasons()


# -- deletion ------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, writer: FakeWriter) -> None:
        self.writer = writer

    async def get(self, resource: Any, namespace: str, name: str) -> JSONDict:
        return copy.deepcopy(self.writer.obj)


class FakeAccess:
    def __init__(self) -> None:
        self.cleanups: list[tuple[str, ...]] = []

    def target(self, rm: JSONDict) -> str:
        return str(rm["spec"]["address"])

    async def cleanup(
        self, target: str, commands: tuple[str, ...], uid: str, job: Any, deadlines: Any
    ) -> Outcome:
        self.cleanups.append(commands)
        return Outcome(True, "CleanedUp", f"{target} cleaned up")


def deletion_bed(
    pods_going: float | None = None, obj: JSONDict | None = None
) -> tuple[Any, FakeWriter, list[FakeBackend]]:
    from capi_remote import Store
    from reconcilers.hostjobs import HostJobs
    from reconcilers.pool import CLAIM_INDEX
    from reconcilers.pool.claims import index_by_claimant
    from reconcilers.remotemachine.cleanup import Deletion

    if obj is None:
        obj = new_machine(cleanUpCommands=["reset"])
        obj["status"] = {"bootstrap": {"attempts": 1}}
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    writer = FakeWriter(obj)

    @attrs.define
    class Going(FakeBackend):
        async def cancel(self, rm: JSONDict) -> float | None:
            self.cancelled += 1
            return pods_going

    backends = [runner_like(), Going()]
    memory = MachineMemory()
    memory[UID].retry_at = 1e18  # a bootstrap's backoff must not delay the cleanup
    deletion = Deletion(
        FakeClient(writer),  # type: ignore[arg-type]
        writer,
        memory,
        AttemptPolicy(),
        FakeAccess(),  # type: ignore[arg-type]
        HostJobs(lambda request: None),
        backends,
        (Store({CLAIM_INDEX: index_by_claimant}), Store()),
    )
    return deletion, writer, backends


async def test_deletion_cancels_cleans_the_host_and_forgets() -> None:
    deletion, writer, backends = deletion_bed()
    request = Request("ns", "m")
    await deletion.run(LOG, copy.deepcopy(writer.obj), request)
    assert [b.cancelled for b in backends] == [1, 1]
    assert writer.status_["phase"] == "Deleting"
    job = deletion.jobs.state(UID)
    assert job is not None and job.task is not None
    await asyncio.wait_for(job.task, 5)
    await deletion.run(LOG, copy.deepcopy(writer.obj), request)
    assert deletion.access.cleanups == [("reset",)]
    assert writer.obj["metadata"]["finalizers"] == []
    assert len(deletion.memory) == 0
    assert ("Normal", "Released", "host cleaned up and released") in writer.events


@pytest.mark.parametrize("started", [True, False], ids=["started", "never-started"])
async def test_deletion_after_a_restart_cleans_a_host_an_attempt_touched(started: bool) -> None:
    """An attempt started, then the controller restarted before its first progress write:
    neither status nor the fresh memory knows of it, but the finalizer its start wrote does, and
    the host is cleaned. A machine that never started has no finalizer: its host is not
    logged into (and the object is gone at once)."""
    b = bed(cleanUpCommands=["reset"])
    meta, spec = b.writer.obj["metadata"], b.writer.obj["spec"]
    del meta["finalizers"], meta["annotations"], spec["providerID"]
    if started:
        await b.step()
        assert b.backend.starts == [1] and b.writer.status_writes == 0
    deletion, writer, _ = deletion_bed(obj=b.writer.obj)  # a restarted controller's memory
    assert "bootstrap" not in writer.obj["status"] and deletion.memory[UID].started is None
    request = Request("ns", "m")
    await deletion.run(LOG, copy.deepcopy(writer.obj), request)
    job = deletion.jobs.state(UID)
    if not started:
        assert job is None and deletion.access.cleanups == []
        return
    assert job is not None and job.task is not None
    await asyncio.wait_for(job.task, 5)
    await deletion.run(LOG, copy.deepcopy(writer.obj), request)
    assert deletion.access.cleanups == [("reset",)]
    assert writer.obj["metadata"]["finalizers"] == []


async def test_deletion_waits_for_a_backend_that_is_winding_down() -> None:
    deletion, writer, _ = deletion_bed(pods_going=2.0)
    result = await deletion.run(LOG, copy.deepcopy(writer.obj), Request("ns", "m"))
    assert result == Result(requeue_after=2.0)
    assert deletion.access.cleanups == []
    assert writer.obj["metadata"]["finalizers"]


# -- any sequence of events ------------------------------------------------------------------------


class FlowMachine(RuleBasedStateMachine):
    """Random outcomes, waits, spec changes and restarts; the attempt bookkeeping holds."""

    def __init__(self) -> None:
        super().__init__()
        self.b = bed(runner_like(), maxAttempts=3)
        self.starts_this_generation: list[int] = []

    def _step(self) -> None:
        if self.b.writer.obj["status"].get("initialization"):
            return  # provisioned: the dispatch keeps it steady, the flow is done
        before = len(self.b.backend.starts)
        asyncio.run(self.b.step())
        self.starts_this_generation += self.b.backend.starts[before:]

    def _running(self) -> int | None:
        seen = self.b.backend.seen
        return seen.attempt if isinstance(seen, Running) else None

    @rule()
    def reconcile(self) -> None:
        self._step()

    @rule()
    def time_passes(self) -> None:
        self.b.time_passes()
        self._step()

    @rule(luck=st.integers(0, 4), retry=st.booleans(), locked=st.booleans())
    def attempt_ends(self, luck: int, retry: bool, locked: bool) -> None:
        attempt = self._running()
        if attempt is None:
            return
        reason = c.HOST_LOCKED if locked else "StepFailed"
        ok = luck == 0  # mostly failures: they are what the bookkeeping is about
        outcome = Outcome(True, c.PROVISIONED) if ok else Outcome(False, reason, "x", retry)
        self.b.backend.seen = Finished(attempt, self.b.backend.generation, outcome)
        self._step()

    @rule()
    def spec_changes(self) -> None:
        if not self.b.writer.obj["status"].get("initialization"):
            self.b.writer.obj["metadata"]["generation"] += 1
            self.starts_this_generation = []

    @rule()
    def controller_restarts(self) -> None:
        self.b = Bed(self.b.writer, runner_like())

    @invariant()
    def attempts_stay_within_the_budget(self) -> None:
        status = self.b.writer.obj["status"]
        recorded = (status.get("bootstrap") or {}).get("attempts", 0)
        assert recorded <= 3
        distinct = sorted(set(self.starts_this_generation))
        assert distinct == list(range(1, len(distinct) + 1))  # 1, 2, 3: none skipped
        outcome: JSONDict = next(
            (x for x in status.get("conditions") or [] if x["type"] == c.BOOTSTRAP_SUCCEEDED), {}
        )
        current = outcome.get("observedGeneration") == self.b.writer.obj["metadata"]["generation"]
        if self.starts_this_generation and current and self._running() is None:
            # An outcome of this generation, nothing running: status shows the last attempt, or
            # the one before it when the last one's start was never written (the controller
            # restarted before its first progress write: it runs again under the same number).
            last = self.starts_this_generation[-1]
            assert recorded in (last - 1, last)

    @invariant()
    def failed_means_no_attempt_runs(self) -> None:
        if self.b.writer.obj["status"].get("phase") == "Failed":
            assert self._running() is None


TestFlowMachine = FlowMachine.TestCase
TestFlowMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
