"""Fair admission to the parse workers (issue 13: a tenant's bombs must not starve another's
parses). The admission itself is driven step by step; one test runs it in the real sandbox."""

from __future__ import annotations

import asyncio

import pytest

from capi_remote.bootstrap import InstanceMetadata, ParseSandbox, SandboxSettings
from capi_remote.bootstrap.admission import FairAdmission
from tests.unit.test_bootstrap_bombs import SLOW, children_of_forkserver, template, wait_for

METADATA = InstanceMetadata(instance_id="i", local_hostname="h", hostname="h")


class Holders:
    """Tasks that take a slot of ``admission`` under a key and hold it until released."""

    def __init__(self, admission: FairAdmission) -> None:
        self.admission = admission
        self.admitted: list[str] = []
        self._release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, key: str, name: str) -> None:
        self._release[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(self._hold(key, name))

    async def _hold(self, key: str, name: str) -> None:
        async with self.admission.slot(key):
            self.admitted.append(name)
            await self._release[name].wait()

    async def finish(self, name: str) -> None:
        self._release[name].set()
        await self.tasks[name]
        await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_another_namespace_is_admitted_before_the_rest_of_a_bomb_queue() -> None:
    holders = Holders(FairAdmission(2))
    for i in range(1, 11):
        holders.submit("a", f"a{i}")
    await settle()
    holders.submit("b", "b1")
    await settle()
    assert holders.admitted == ["a1", "a2"]
    await holders.finish("a1")
    assert holders.admitted == ["a1", "a2", "b1"]  # before a3, let alone a10
    for name in ["a2", "b1", *(f"a{i}" for i in range(3, 11))]:
        await holders.finish(name)
    assert holders.admitted == ["a1", "a2", "b1", *(f"a{i}" for i in range(3, 11))]


async def test_waiting_namespaces_take_turns() -> None:
    holders = Holders(FairAdmission(1))
    holders.submit("a", "a1")
    await settle()
    for name in ["a2", "a3"]:
        holders.submit("a", name)
    for name in ["b1", "b2"]:
        holders.submit("b", name)
    holders.submit("c", "c1")
    await settle()
    order = ["a1", "b1", "c1", "a2", "b2", "a3"]
    for name in order:
        assert holders.admitted[-1] == name
        await holders.finish(name)
    assert holders.admitted == order


async def test_one_namespace_alone_uses_every_slot() -> None:
    holders = Holders(FairAdmission(2))
    for name in ["a1", "a2", "a3"]:
        holders.submit("a", name)
    await settle()
    assert holders.admitted == ["a1", "a2"]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = FairAdmission(1)
    holders = Holders(admission)
    for key in "abc":
        holders.submit(key, f"{key}1")
    await settle()
    holders.tasks["b1"].cancel()
    await settle()
    assert admission.waiting("b") == 0
    await holders.finish("a1")
    assert holders.admitted == ["a1", "c1"]


async def test_a_waiter_cancelled_just_after_its_grant_gives_the_slot_back() -> None:
    admission = FairAdmission(1)
    holders = Holders(admission)
    async with admission.slot("a"):
        holders.submit("b", "b1")
        await settle()
    holders.tasks["b1"].cancel()  # granted on the way out above, cancelled before it ran
    await settle()
    holders.submit("c", "c1")
    await settle()
    assert holders.admitted == ["c1"]


async def test_the_sandbox_admits_another_namespace_before_a_queued_bomb() -> None:
    sandbox = ParseSandbox(SandboxSettings(workers=1, wall_seconds=60))
    bombs = [
        asyncio.create_task(sandbox.parse(template(SLOW), None, metadata=METADATA, tenant="a"))
        for _ in range(3)
    ]
    await wait_for(children_of_forkserver)
    plain = asyncio.create_task(
        sandbox.parse(b"#cloud-config\nruncmd: [[echo, hi]]\n", None, metadata=METADATA, tenant="b")
    )
    await asyncio.sleep(0)
    bombs[0].cancel()  # the running bomb ends: the next turn is b's, not a's second bomb
    plan = await plain
    assert plan.steps[0].argv == ("echo", "hi")  # type: ignore[union-attr]
    assert not any(bomb.done() for bomb in bombs[1:])
    for bomb in bombs:
        bomb.cancel()
    await asyncio.gather(*bombs, return_exceptions=True)
    with pytest.raises(asyncio.CancelledError):
        await bombs[1]
    await wait_for(lambda: not children_of_forkserver())
