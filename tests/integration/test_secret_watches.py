"""ObjectSource against the real API server (issue 13, point 4): renaming the Secret a
RemoteMachine names, again and again, leaves a bounded number of watches open at the API server,
and a released watch really ends there."""

from __future__ import annotations

import asyncio
import re

import pytest

from capi_remote import Event, KubeClient, Manager
from capi_remote.resources import SECRETS
from reconcilers.secrets import ObjectSource

pytestmark = pytest.mark.integration

# Watches of one named Secret (the API server's scope "resource"): ours; the test bed's managers
# watch Secrets cluster-wide.
_WATCHES = re.compile(
    r'^apiserver_longrunning_requests\{(?=[^}]*resource="secrets")(?=[^}]*scope="resource")'
    r'(?=[^}]*verb="WATCH")[^}]*\} (\d+)',
    re.MULTILINE,
)


async def secret_watches(kube: KubeClient) -> int:
    """Watches of single named Secrets open at the API server now."""
    response = await kube._request("GET", "/metrics")
    try:
        text = (await response.read()).decode()
    finally:
        response.release()
    return sum(int(count) for count in _WATCHES.findall(text))


async def eventually(kube: KubeClient, expected: int, limit: float = 30.0) -> None:
    seen: list[int] = []
    try:
        async with asyncio.timeout(limit):
            while (count := await secret_watches(kube)) != expected:
                seen.append(count)
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{expected} Secret watches expected, saw {seen[-5:]}") from None


def ignore(event: Event) -> None:
    pass


async def test_renamed_references_do_not_pile_up_watches(kube: KubeClient, namespace: str) -> None:
    baseline = await secret_watches(kube)
    manager = Manager(kube)
    manager.informers.start()
    current = {"name": ""}
    source = ObjectSource(
        manager, SECRETS, ignore, referenced=lambda _, name: name == current["name"]
    )
    try:
        for i in range(300):
            current["name"] = f"ssh-key-{i}"
            source.value(namespace, current["name"], "ssh-privatekey")
            await asyncio.sleep(0.01)
        assert source.watches <= 64
        await eventually(kube, baseline + source.watches)
        source.release(namespace, current["name"])
        await eventually(kube, baseline + source.watches)
    finally:
        await manager.informers.stop()
    await eventually(kube, baseline)
