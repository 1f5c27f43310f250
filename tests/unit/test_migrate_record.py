"""The migration's progress record: what one run writes, the next reads, and two runs at once."""

from __future__ import annotations

import io
from typing import Any

import pytest

from capi_remote.kube.client import ApiError, Resource
from capi_remote.migrate import command
from capi_remote.migrate.errors import MigrationError
from capi_remote.migrate.record import RECORD_NAME, Record
from capi_remote.ssh.keyscan import ScannedKey

JSONDict = dict[str, Any]


class ConfigMaps:
    """The three calls the record makes, on one stored ConfigMap with a resourceVersion."""

    def __init__(self) -> None:
        self.stored: JSONDict | None = None
        self.version = 0

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        if self.stored is None:
            raise ApiError(404, "NotFound", name)
        return self.stored

    async def create(self, resource: Resource, obj: JSONDict) -> JSONDict:
        return self._store(obj)

    async def replace(self, resource: Resource, obj: JSONDict) -> JSONDict:
        assert self.stored is not None
        if obj["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        return self._store(obj)

    def _store(self, obj: JSONDict) -> JSONDict:
        self.version += 1
        self.stored = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        return self.stored


async def test_a_run_continues_from_what_the_last_one_recorded() -> None:
    kube: Any = ConfigMaps()
    first = await Record.load(kube, "kube-system")
    assert not first.exists
    first.state.targets = ["team-a/demo"]
    first.state.paused_before = []
    first.saved_crds["remotemachines.example"] = {
        "kind": "CustomResourceDefinition",
        "x": "y" * 5000,
    }
    await first.mark_done("pause")
    assert kube.stored["metadata"]["name"] == RECORD_NAME

    second = await Record.load(kube, "kube-system")
    assert second.state.done == ["pause"]
    assert second.state.targets == ["team-a/demo"] and second.state.paused_before == []
    assert second.saved_crds == first.saved_crds
    # Compressed: five thousand repeated characters take far less than that.
    assert len(kube.stored["binaryData"]["crd.remotemachines.example"]) < 500


async def test_turning_around_starts_the_steps_afresh_but_keeps_what_undo_needs() -> None:
    kube: Any = ConfigMaps()
    record = await Record.load(kube, "kube-system")
    record.state.replicas = {"k0smotron/manager": 2}
    await record.mark_done("stop-reference")
    record.begin("rollback")
    assert record.state.done == [] and record.state.replicas == {"k0smotron/manager": 2}
    record.begin("rollback")
    await record.mark_done("pause")
    assert record.state.done == ["pause"]


async def test_two_runs_at_once_do_not_overwrite_each_other() -> None:
    kube: Any = ConfigMaps()
    await (await Record.load(kube, "kube-system")).save()
    one = await Record.load(kube, "kube-system")
    other = await Record.load(kube, "kube-system")
    await one.mark_done("pause")
    with pytest.raises(MigrationError, match="another migrate"):
        await other.mark_done("crds")
    assert (await Record.load(kube, "kube-system")).state.done == ["pause"]


@pytest.mark.parametrize(
    ("answer", "trusted"), [("y\n", True), ("yes\n", True), ("n\n", False), ("", False)]
)
async def test_the_operator_confirms_a_key_on_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], answer: str, trusted: bool
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    key = ScannedKey("192.0.2.10", 2222, "ssh-ed25519", b"\x00\x00\x00\x0bssh-ed25519" + bytes(36))
    assert await command.ask_on_terminal(key) is trusted
    assert f"192.0.2.10:2222 presents ssh-ed25519 {key.fingerprint}" in capsys.readouterr().out
