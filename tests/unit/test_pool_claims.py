"""Claims count only within one namespace and for the claimant's UID (or a claimant bound to the
host, as after clusterctl move); a provisioning Job counts only for a machine of its own
namespace."""

from __future__ import annotations

from typing import Any

from capi_remote import Store
from reconcilers.pool import CLAIM_INDEX
from reconcilers.pool.claims import bound_here, held_by, holds, index_by_claimant
from reconcilers.remotemachine.job_backend import machine_key
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL

JSONDict = dict[str, Any]


def pooled(namespace: str, name: str, claim: JSONDict | None) -> JSONDict:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"pool": "p", "machine": {"address": "192.0.2.1"}, "claim": claim},
    }


MACHINE = {"metadata": {"namespace": "a", "name": "m", "uid": "u1"}, "spec": {}}


def test_a_claim_naming_another_namespace_is_nobodys() -> None:
    foreign = pooled("b", "host", {"namespace": "a", "name": "m", "uid": "u1"})
    own = pooled("a", "host", {"namespace": "a", "name": "m", "uid": "u1"})
    assert index_by_claimant(foreign) == []
    assert not holds(foreign, MACHINE)
    assert index_by_claimant(own) == ["a/m"]
    assert holds(own, MACHINE)
    store = Store({CLAIM_INDEX: index_by_claimant})
    store.upsert(foreign)
    assert held_by(store, MACHINE) == []
    store.upsert(own)
    assert held_by(store, MACHINE) == [own]


def test_a_claim_is_matched_by_uid_where_it_has_one() -> None:
    assert not holds(pooled("a", "h", {"namespace": "a", "name": "m", "uid": "old"}), MACHINE)
    assert holds(pooled("a", "h", {"namespace": "a", "name": "m"}), MACHINE)


def test_a_claimant_bound_to_the_host_holds_it_under_a_new_uid() -> None:
    """clusterctl move gives the claimant a new UID but keeps its spec, bound to the host."""
    claimed = pooled("a", "h", {"namespace": "a", "name": "m", "uid": "old"})
    moved = {**MACHINE, "spec": {"address": "192.0.2.1", "port": 22}}
    assert bound_here(moved, claimed)
    assert holds(claimed, moved)
    elsewhere = {**MACHINE, "spec": {"address": "192.0.2.2"}}
    assert not bound_here(elsewhere, claimed)
    assert not holds(claimed, elsewhere)
    other_port = {**MACHINE, "spec": {"address": "192.0.2.1", "port": 2222}}
    assert not holds(claimed, other_port)


def test_jobs_are_keyed_by_their_own_namespace() -> None:
    job = {"metadata": {"namespace": "b", "name": "j", "labels": {MACHINE_UID_LABEL: "u1"}}}
    assert machine_key(job) == ["b/u1"]
    assert machine_key({"metadata": {"namespace": "b", "name": "j"}}) == []
