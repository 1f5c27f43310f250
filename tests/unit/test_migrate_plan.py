"""``capi-remote migrate``'s plan (what ``--dry-run`` prints and a run follows), the record it
resumes from, and which hosts the host-key step covers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capi_remote.migrate import hostkeys, plan
from capi_remote.migrate.options import Options
from capi_remote.migrate.record import State
from capi_remote.ssh import HostUnreachable
from capi_remote.ssh.keyscan import ScannedKey
from tests.unit.test_migrate_checks import NS, deployment, inventory, remote_machine

JSONDict = dict[str, Any]


def cluster(name: str, *, paused: bool = False, infra: str = "RemoteCluster") -> JSONDict:
    return {
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"paused": paused, "infrastructureRef": {"kind": infra, "name": name}},
    }


def pooled(name: str, address: str, **machine: Any) -> JSONDict:
    return {
        "kind": "PooledRemoteMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"pool": "p", "machine": {"address": address, "port": 22, **machine}},
    }


def by_name(steps: list[plan.PlannedStep]) -> dict[str, plan.PlannedStep]:
    return {s.name: s for s in steps}


def test_a_fresh_migration_plans_every_step_in_order() -> None:
    inv = inventory(
        clusters=[cluster("demo"), cluster("held", paused=True), cluster("other", infra="Docker")],
        remote_machines=[remote_machine("rm-0", "demo"), remote_machine("rm-1", "held")],
        provider_deployments=[deployment("k0smotron", "k0sproject-k0smotron", replicas=2)],
    )
    steps = plan.make(inv, Options(stop_all_in_one=True), State())
    assert [s.name for s in steps] == list(plan.MIGRATE_STEPS)
    assert not any(s.done for s in steps)
    pause = by_name(steps)["pause"]
    assert pause.summary == "pause 2 Clusters (spec.paused)"
    assert pause.details == (
        "Clusters: team-a/demo, team-a/held",
        "already paused by their owners (left paused at the end): team-a/held",
    )
    assert by_name(steps)["unpause"].details == ("Clusters: team-a/demo",)
    assert by_name(steps)["stop-reference"].details == (
        "Deployment team-a/k0smotron: replicas 2 -> 0",
    )


def test_a_resumed_run_skips_recorded_steps_and_keeps_the_recorded_pause_state() -> None:
    # Killed after pausing: every target now looks paused, but the record knows who paused it.
    inv = inventory(
        clusters=[cluster("demo", paused=True), cluster("held", paused=True)],
        remote_machines=[remote_machine("rm-0", "demo"), remote_machine("rm-1", "held")],
    )
    state = State(
        done=["pause", "stop-reference"],
        targets=["team-a/demo", "team-a/held"],
        paused_before=["team-a/held"],
    )
    steps = by_name(plan.make(inv, Options(), state))
    assert steps["pause"].done and steps["stop-reference"].done
    assert not steps["crds"].done
    assert not steps["check"].done and not steps["report"].done  # they run every time
    assert steps["unpause"].details == ("Clusters: team-a/demo",)


def test_steps_done_in_the_other_direction_do_not_count() -> None:
    state = State(direction="migrate", done=list(plan.MIGRATE_STEPS))
    rollback = plan.make(inventory(), Options(rollback=True), state)
    assert [s.name for s in rollback] == list(plan.ROLLBACK_STEPS)
    assert not any(s.done for s in rollback)
    again = plan.make(inventory(), Options(), state)
    assert all(s.done for s in again if s.name not in plan.ALWAYS)


def test_the_host_key_step_covers_unprovisioned_machines_and_pool_hosts_without_a_policy() -> None:
    provisioned = remote_machine("old", address="192.0.2.1")
    provisioned["status"] = {"initialization": {"provisioned": True}}
    keyed = remote_machine("keyed", address="192.0.2.2", hostKeyPolicy={"fingerprint": "x"})
    new = remote_machine("new", address="192.0.2.3", port=2222)
    waiting_for_pool = remote_machine("pool-rm", pool="p")
    del waiting_for_pool["spec"]["address"]
    # k0smotron's Teleport guide: the Job's own tsh logs in; OpenSSH options would break it.
    teleport = remote_machine("tsh", address="192.0.2.6", provisionJob={"sshCommand": "tsh ssh"})
    del teleport["spec"]["sshKeyRef"]
    inv = inventory(
        remote_machines=[provisioned, keyed, new, waiting_for_pool, teleport],
        pooled=[
            pooled("free", "192.0.2.4"),
            pooled("pinned", "192.0.2.5", hostKeyPolicy={"trustOnFirstUse": True}),
        ],
    )
    found = hostkeys.unkeyed(inv)
    assert [(u.kind, u.name, u.host) for u in found] == [
        ("RemoteMachine", "new", ("192.0.2.3", 2222)),
        ("PooledRemoteMachine", "free", ("192.0.2.4", 22)),
    ]
    step = by_name(plan.make(inv, Options(trust_on_first_use=True), State()))["host-keys"]
    assert step.summary == "host keys for 2 hosts of 2 objects without a policy"
    assert step.details[0] == "keys the hosts present now, trusted on first use"


def test_keys_from_a_verified_file_are_written_under_each_hosts_own_name(tmp_path: Path) -> None:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + bytes(36)
    line = ScannedKey("192.0.2.3", 2222, "ssh-ed25519", blob).known_hosts_line()
    other = ScannedKey("192.0.2.9", 22, "ssh-ed25519", blob).known_hosts_line()
    wildcard = "192.0.2.* " + line.split(" ", 1)[1]
    path = tmp_path / "known_hosts"
    path.write_text(f"{line}\n{other}\n{wildcard}\n")
    found = hostkeys.from_file(path, {("192.0.2.3", 2222), ("192.0.2.4", 22), ("10.0.0.1", 22)})
    assert set(found) == {("192.0.2.3", 2222), ("192.0.2.4", 22)}
    # The wildcard vouches for .4, and is written under .4's name only.
    assert found[("192.0.2.4", 22)] == [line.replace("[192.0.2.3]:2222", "192.0.2.4")]


def test_the_record_state_round_trips_and_ignores_unknown_keys() -> None:
    state = State(
        direction="rollback",
        done=["pause"],
        targets=["a/b"],
        paused_before=[],
        replicas={"k/m": 2},
    )
    assert State.from_json(state.to_json()) == state
    assert State.from_json('{"done": ["crds"], "future": 1}') == State(done=["crds"])


async def test_scanned_keys_are_kept_only_when_confirmed_and_unreachable_hosts_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + bytes(36)

    def scan(address: str, port: int, timeout: float) -> ScannedKey:
        if address == "192.0.2.9":
            raise HostUnreachable(f"{address}:{port}", "connection refused")
        return ScannedKey(address, port, "ssh-ed25519", blob)

    monkeypatch.setattr(hostkeys, "scan", scan)
    asked: list[str] = []

    async def confirm(key: ScannedKey) -> bool:
        asked.append(f"{key.address} {key.fingerprint}")
        return key.address == "192.0.2.1"

    unreachable: list[tuple[tuple[str, int], str]] = []
    hosts = {("192.0.2.1", 22), ("192.0.2.2", 22), ("192.0.2.9", 22)}
    found = await hostkeys.from_hosts(
        hosts, 1.0, confirm, lambda host, detail: unreachable.append((host, detail))
    )
    assert found == {
        ("192.0.2.1", 22): [ScannedKey("192.0.2.1", 22, "ssh-ed25519", blob).known_hosts_line()]
    }
    assert sorted(a.split()[0] for a in asked) == ["192.0.2.1", "192.0.2.2"]
    assert unreachable == [(("192.0.2.9", 22), "connection refused")]
    # Trust on first use: no questions, every key that answered.
    trusted = await hostkeys.from_hosts(hosts, 1.0, None, lambda host, detail: None)
    assert set(trusted) == {("192.0.2.1", 22), ("192.0.2.2", 22)}


def test_a_rollback_takes_back_a_provider_id_set_ahead_of_an_unfinished_bootstrap() -> None:
    """The reference skips every RemoteMachine with a providerID: one capi-remote set ahead of a
    bootstrap that has not succeeded is removed with the touch; any other stays."""
    from capi_remote.api import PROVIDER_ID_SET_FOR_ANNOTATION
    from capi_remote.migrate.rollback import TOUCH_ANNOTATION, touch_patch

    def machine(set_for: str | None, provisioned: bool) -> JSONDict:
        annotations = {PROVIDER_ID_SET_FOR_ANNOTATION: set_for} if set_for else {}
        return {
            "metadata": {"name": "m", "namespace": NS, "uid": "u", "annotations": annotations},
            "spec": {"providerID": "remote-machine://192.0.2.1:22"},
            "status": {"initialization": {"provisioned": provisioned}},
        }

    touched = {"metadata": {"annotations": {TOUCH_ANNOTATION: "now"}}}
    assert touch_patch(machine("u", provisioned=False), "now") == {
        "metadata": {
            "annotations": {TOUCH_ANNOTATION: "now", PROVIDER_ID_SET_FOR_ANNOTATION: None}
        },
        "spec": {"providerID": None},
    }
    assert touch_patch(machine("u", provisioned=True), "now") == touched
    assert touch_patch(machine(None, provisioned=False), "now") == touched  # the reference's own
    assert touch_patch(machine("old-uid", provisioned=False), "now") == touched  # moved
