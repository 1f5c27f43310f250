"""Index values of a Store stay exact through growth and shrinkage (their sets are copied when
they shrink) and through objects moving between values."""

from __future__ import annotations

from typing import Any

from capi_remote import Store


def obj(name: str, pool: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"pool": pool}}


def test_an_index_value_stays_exact_while_it_shrinks_and_grows_again() -> None:
    store = Store({"pool": lambda o: [o["spec"]["pool"]]})
    for i in range(1000):
        store.upsert(obj(f"h{i}", "free"))
    for i in range(995):
        store.upsert(obj(f"h{i}", "taken"))  # moves between values, as a claim does
    assert {o["metadata"]["name"] for o in store.iter_index("pool", "free")} == {
        f"h{i}" for i in range(995, 1000)
    }
    assert len(store.by_index("pool", "taken")) == 995
    for i in range(10):
        store.upsert(obj(f"h{i}", "free"))
    store.remove("ns/h999")
    free = {o["metadata"]["name"] for o in store.iter_index("pool", "free")}
    assert free == {f"h{i}" for i in (*range(10), 995, 996, 997, 998)}
    for name in sorted(free):
        store.remove(f"ns/{name}")
    assert store.by_index("pool", "free") == []
    assert list(store.iter_index("pool", "nothing")) == []
