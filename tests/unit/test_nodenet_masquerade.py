"""The machine's masquerade rules of node networks are found by their comment alone: another
owner's rules (podman's, a rule commented otherwise) are never deleted, and every rule of a node
network is, so a crashed run's rule can be swept."""

from __future__ import annotations

import subprocess

import pytest

from capi_remote_testbed import nodenet

LISTING = """\
-P POSTROUTING ACCEPT
-A POSTROUTING -j NETAVARK-HOSTPORT-MASQ
-A POSTROUTING -s 10.251.3.0/24 ! -d 10.251.3.0/24 -m comment --comment crn3 -j MASQUERADE
-A POSTROUTING -s 10.9.0.0/24 -m comment --comment crn3x -j MASQUERADE
-A POSTROUTING -s 10.251.7.0/24 ! -d 10.251.7.0/24 -m comment --comment crn7 -j MASQUERADE
-A POSTROUTING -s 10.251.3.0/24 -d 10.1.0.0/16 -m comment --comment crn3 -j MASQUERADE
"""


@pytest.fixture
def iptables(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    def fake(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(list(args), 0, LISTING if args[0] == "-S" else "", "")

    monkeypatch.setattr(nodenet, "_iptables", fake)
    return calls


def test_rules_are_grouped_by_the_node_network_their_comment_names(
    iptables: list[tuple[str, ...]],
) -> None:
    rules = nodenet._masquerade_rules()
    assert sorted(rules) == ["crn3", "crn7"]
    assert len(rules["crn3"]) == 2
    crn7 = "-s 10.251.7.0/24 ! -d 10.251.7.0/24 -m comment --comment crn7 -j MASQUERADE"
    assert rules["crn7"] == [["POSTROUTING", *crn7.split(" ")]]


def test_removing_a_node_networks_rules_deletes_exactly_those(
    iptables: list[tuple[str, ...]],
) -> None:
    nodenet._remove_masquerade("crn3")
    deleted = [call[1:] for call in iptables if call[0] == "-D"]
    assert len(deleted) == 2
    assert all(rule[rule.index("--comment") + 1] == "crn3" for rule in deleted)
