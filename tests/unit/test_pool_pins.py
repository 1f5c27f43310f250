"""Issue 13 point 6: a RemoteMachine bound to a pooled host gets the host's key pins, never its
own, so the machine's author cannot choose which key the pool's host is trusted with."""

from __future__ import annotations

from typing import Any

import pytest

from capi_remote.api import BASTION_HOST_KEY_FINGERPRINT_ANNOTATION as BASTION_PIN
from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from reconcilers.pool.claims import host_spec_for

JSONDict = dict[str, Any]
HOST_KEY = "SHA256:" + "A" * 43
TENANT_KEY = "SHA256:" + "B" * 43


def machine(annotations: dict[str, str]) -> JSONDict:
    return {"metadata": {"name": "m", "annotations": annotations}, "spec": {"port": 22}}


def pooled(annotations: dict[str, str]) -> JSONDict:
    return {
        "metadata": {"name": "h", "annotations": annotations},
        "spec": {"machine": {"address": "192.0.2.1", "hostKeyPolicy": {"trustOnFirstUse": True}}},
    }


@pytest.mark.parametrize("pin", [PIN, BASTION_PIN])
def test_the_pooled_hosts_pin_wins(pin: str) -> None:
    bound = host_spec_for(machine({pin: TENANT_KEY, "note": "kept"}), pooled({pin: HOST_KEY}))
    assert bound["metadata"]["annotations"] == {pin: HOST_KEY, "note": "kept"}


def test_a_machines_own_pin_is_dropped_for_an_unpinned_host() -> None:
    bound = host_spec_for(machine({PIN: TENANT_KEY, BASTION_PIN: TENANT_KEY}), pooled({}))
    assert bound["metadata"]["annotations"] == {}
    assert bound["spec"]["address"] == "192.0.2.1"
