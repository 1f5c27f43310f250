"""Issue 13 point 6: a trust-on-first-use host is pinned on the first key exchange and
authentication, before any step or secret goes to it; a failed attempt does not make the next
one trust whatever key it is shown, and an earlier pin is never replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from capi_remote.api import BASTION_HOST_KEY_FINGERPRINT_ANNOTATION as BASTION_PIN
from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from capi_remote.bootstrap import BootstrapPlan, RunCommand
from capi_remote.ssh import HostFacts, HostKeyPolicy, HostUnreachable, Job, Target
from capi_remote.ssh.credentials import Credentials
from reconcilers.hostjobs import HostJobs, JobState, Outcome
from reconcilers.remote import Deadlines, HostAccess

SEEN = "SHA256:" + "A" * 43
EARLIER = "SHA256:" + "B" * 43
BASTION_SEEN = "SHA256:" + "C" * 43
PLAN = BootstrapPlan(steps=(RunCommand(shell="echo join-token"),), format="script")


def facts(host_key: str, bastion_key: str | None = None) -> HostFacts:
    return HostFacts(
        hostname="h",
        os_id="debian",
        os_version_id="12",
        os_pretty_name="Debian",
        kernel="6",
        arch="x86_64",
        cpus=1,
        memory_bytes=1,
        addresses=(),
        host_key_fingerprint=host_key,
        privilege="root",
        bastion_host_key_fingerprint=bastion_key,
    )


class Runner:
    """Records in order what went to the host: probes (no step) and jobs (steps)."""

    def __init__(self, seen: HostFacts | Exception) -> None:
        self.seen = seen
        self.calls: list[tuple[str, Target]] = []

    async def probe(self, target: Target) -> HostFacts:
        self.calls.append(("probe", target))
        if isinstance(self.seen, Exception):
            raise self.seen
        return self.seen

    async def submit(self, job: Job) -> Any:
        self.calls.append(("job", job.target))
        raise HostUnreachable(job.target.address, "the attempt fails after the pin")


def target(policy: HostKeyPolicy, bastion: Target | None = None) -> Target:
    return Target(
        address="192.0.2.1",
        credentials=Credentials(user="root", private_key="k"),
        host_key=policy,
        via=bastion,
    )


def run(runner: Runner, given: Target, annotations: dict[str, str]) -> tuple[Outcome, list[str]]:
    """One attempt as the runner backend makes it; ``annotations`` is the object's store."""
    order: list[str] = []

    async def record(seen: dict[str, str]) -> dict[str, str]:
        order.append("pin")
        for name, value in seen.items():
            annotations.setdefault(name, value)  # an earlier pin wins
        return {name: annotations[name] for name in seen}

    async def attempt() -> Outcome:
        access = HostAccess(runner, None, None)  # type: ignore[arg-type]
        pinned = await access.pin_first_use(given, record)
        if isinstance(pinned, Outcome):
            return pinned
        jobs = HostJobs(lambda request: None)
        job = JobState("provision", None)  # type: ignore[arg-type]
        return await access.provision(pinned, PLAN, "uid", job, jobs, Deadlines(1, 1, 1))

    outcome = asyncio.run(attempt())
    return outcome, order


def test_the_key_is_pinned_before_the_job_and_a_failed_attempt_keeps_it() -> None:
    runner, annotations = Runner(facts(SEEN)), dict[str, str]()
    outcome, order = run(runner, target(HostKeyPolicy.trust_on_first_use()), annotations)
    assert not outcome.ok and annotations == {PIN: SEEN} and order == ["pin"]
    (probe, first), (job, sent) = runner.calls
    assert (probe, job) == ("probe", "job")
    assert first.host_key.fingerprints == ()  # only the probe trusted on first use
    assert sent.host_key.fingerprints == (SEEN,)  # the steps go only to the pinned key


def test_an_earlier_pin_wins_over_the_key_a_later_probe_sees() -> None:
    runner, annotations = Runner(facts(SEEN)), {PIN: EARLIER}  # pinned by a concurrent attempt
    run(runner, target(HostKeyPolicy.trust_on_first_use()), annotations)
    assert annotations == {PIN: EARLIER}
    assert runner.calls[-1][1].host_key.fingerprints == (EARLIER,)


def test_a_pinned_or_verified_host_is_not_probed_first() -> None:
    for policy in (HostKeyPolicy.trust_on_first_use(EARLIER), HostKeyPolicy.pinned(EARLIER)):
        runner = Runner(facts(SEEN))
        run(runner, target(policy), {})
        assert [kind for kind, _ in runner.calls] == ["job"]


def test_a_bastion_is_pinned_too() -> None:
    bastion = target(HostKeyPolicy.trust_on_first_use())
    bastion = attrs.evolve(bastion, address="192.0.2.2")
    runner, annotations = Runner(facts(EARLIER, BASTION_SEEN)), dict[str, str]()
    run(runner, target(HostKeyPolicy.pinned(EARLIER), bastion), annotations)
    assert annotations == {BASTION_PIN: BASTION_SEEN}
    sent = runner.calls[-1][1]
    assert sent.via is not None and sent.via.host_key.fingerprints == (BASTION_SEEN,)


def test_a_failed_probe_pins_nothing_and_runs_no_step() -> None:
    runner, annotations = Runner(HostUnreachable("192.0.2.1", "refused")), dict[str, str]()
    outcome, order = run(runner, target(HostKeyPolicy.trust_on_first_use()), annotations)
    assert (outcome.reason, annotations, order) == ("HostUnreachable", {}, [])
    assert [kind for kind, _ in runner.calls] == ["probe"]
