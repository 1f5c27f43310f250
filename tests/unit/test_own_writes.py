"""Read-your-writes over a lagging cache (reconcilers.common.OwnWrites)."""

from __future__ import annotations

from typing import Any

from reconcilers.common import OwnWrites


def obj(rv: str, phase: str, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": rv}, "status": {"phase": phase}}


def test_a_lagging_cache_is_read_through_our_last_write() -> None:
    own = OwnWrites()
    first = own.note(obj("1", "Pending"), obj("2", "Provisioning"))
    own.note(first, obj("3", "Provisioned"))
    # The cache still shows version 1, then 2: both were replaced by our writes.
    assert own.view(obj("1", "Pending"))["status"]["phase"] == "Provisioned"
    assert own.view(obj("2", "Provisioning"))["metadata"]["resourceVersion"] == "3"


def test_once_the_cache_moves_on_it_wins() -> None:
    own = OwnWrites()
    own.note(obj("1", "Pending"), obj("2", "Provisioning"))
    later = obj("5", "Deleting")  # someone wrote after us; the cache has it
    assert own.view(later) is later
    assert own.view(obj("1", "Pending"))["metadata"]["resourceVersion"] == "1"  # forgotten


def test_no_write_nothing_remembered() -> None:
    own = OwnWrites()
    before = obj("1", "Pending")
    assert own.note(before, None) is before
    assert own.view(before) is before


def test_objects_are_kept_apart_by_uid() -> None:
    own = OwnWrites()
    own.note(obj("1", "Pending", uid="a"), obj("2", "Provisioning", uid="a"))
    other = obj("1", "Pending", uid="b")
    assert own.view(other) is other
