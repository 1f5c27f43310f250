"""Leader election and the Event recorder keep going when the API server drops a connection.

A kube-apiserver that dies (or restarts) mid-request makes the client raise ``TransportError``
(tests/unit/test_kube_client.py: whatever aiohttp raised), or answer 503 while it starts. Each only
means "this attempt failed", never "stop": a leader that renews in time keeps leading, and the
Event drain goes on with the next Event (found by the R6 chaos test,
tests/chaos/test_apiserver_restart.py).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, cast

import pytest

from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError
from capi_remote.kube.events import EventRecorder
from capi_remote.kube.leader import LeaderElectionSettings, LeaderElector, LeadershipLost

JSONDict = dict[str, Any]


def _dropped(detail: str) -> Exception:
    return TransportError("PUT", "/apis/coordination.k8s.io/v1/leases", detail)


def _starting(detail: str) -> Exception:
    return ApiError(503, "ServiceUnavailable", detail)


DROPPED: list[Callable[[str], Exception]] = [_dropped, _starting]


class FlakyLeaseServer:
    """A fake KubeClient holding one Lease; ``failing`` makes every call raise that error."""

    def __init__(self) -> None:
        self.lease: JSONDict | None = None
        self.version = 0
        self.failing: Exception | None = None
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failing is not None:
            raise self.failing

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        self._maybe_fail()
        if self.lease is None:
            raise ApiError(404, "NotFound", "no lease")
        return copy.deepcopy(self.lease)

    async def create(self, resource: Resource, obj: JSONDict) -> JSONDict:
        self._maybe_fail()
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.lease = copy.deepcopy(obj)
        return obj

    async def replace(self, resource: Resource, obj: JSONDict, **_: Any) -> JSONDict:
        self._maybe_fail()
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.lease = copy.deepcopy(obj)
        return obj


def _settings() -> LeaderElectionSettings:
    return LeaderElectionSettings(
        namespace="default",
        name="test",
        identity="me",
        lease_duration=1.5,
        renew_deadline=1.0,
        retry_period=0.05,
    )


@pytest.mark.parametrize("error", DROPPED)
async def test_a_dropped_connection_is_a_failed_renewal_not_a_crash(
    error: Callable[[str], Exception],
) -> None:
    server = FlakyLeaseServer()
    elector = LeaderElector(cast(KubeClient, server), _settings())
    finished = asyncio.Event()

    async def lead() -> None:
        await asyncio.sleep(0.2)
        server.failing = error("connection dropped")  # shorter than the renew deadline
        await asyncio.sleep(0.4)
        server.failing = None
        await asyncio.sleep(0.3)
        finished.set()

    await asyncio.wait_for(elector.run(lead), 10)
    assert finished.is_set()
    assert server.lease is not None
    assert server.lease["spec"]["holderIdentity"] == ""  # released on the way out


@pytest.mark.parametrize("error", DROPPED)
async def test_a_connection_dropped_beyond_the_renew_deadline_loses_leadership(
    error: Callable[[str], Exception],
) -> None:
    server = FlakyLeaseServer()
    elector = LeaderElector(cast(KubeClient, server), _settings())

    async def lead() -> None:
        await asyncio.sleep(0.1)
        server.failing = error("connection dropped")
        await asyncio.sleep(60)

    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(elector.run(lead), 10)
    assert not elector.is_leader


async def test_acquiring_retries_through_dropped_connections() -> None:
    server = FlakyLeaseServer()
    server.failing = _dropped("ServerDisconnectedError: Server disconnected")
    elector = LeaderElector(cast(KubeClient, server), _settings())
    led = asyncio.Event()

    async def lead() -> None:
        led.set()

    async def heal() -> None:
        await asyncio.sleep(0.2)
        server.failing = None

    healing = asyncio.create_task(heal())
    await asyncio.wait_for(elector.run(lead), 10)
    await healing
    assert led.is_set()
    assert server.calls > 2


class FlakyEvents:
    """A fake KubeClient for Events: the first ``failures`` creates raise ``error``."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.created: list[JSONDict] = []

    async def create(self, resource: Resource, obj: JSONDict) -> JSONDict:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.created.append(obj)
        return obj

    async def patch(self, *args: Any, **kwargs: Any) -> JSONDict:
        raise AssertionError("no aggregation expected")


def _object(name: str) -> JSONDict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
    }


@pytest.mark.parametrize(
    "error",
    [_dropped("ClientPayloadError: cut"), _starting("not ready"), ValueError("bad")],
)
async def test_the_event_drain_survives_a_failed_write(error: Exception) -> None:
    client = FlakyEvents(error, failures=1)
    recorder = EventRecorder(cast(KubeClient, client))
    recorder.start()
    recorder.record(_object("first"), "Normal", "Lost", "written while the server was away")
    recorder.record(_object("second"), "Normal", "Kept", "written after it came back")
    # stop() waits for the queue: with a dead drain task it would wait forever.
    await asyncio.wait_for(recorder.stop(), 5)
    assert [e["reason"] for e in client.created] == ["Kept"]
