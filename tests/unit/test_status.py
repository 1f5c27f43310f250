"""Conditions and change-only patches: the rules that keep steady state write-free."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from capi_remote.kube.status import _merge_patch, set_condition
from tests.support.merge_patch import apply_merge_patch


def test_transition_time_moves_only_when_status_changes() -> None:
    first = set_condition([], "Ready", False, "Waiting", now="2026-01-01T00:00:00Z")
    same = set_condition(first, "Ready", False, "StillWaiting", "m", now="2026-01-01T00:05:00Z")
    flipped = set_condition(same, "Ready", True, "Provisioned", now="2026-01-01T00:09:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "StillWaiting"
    assert flipped[0] == {
        "type": "Ready",
        "status": "True",
        "reason": "Provisioned",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:09:00Z",
    }


def test_set_condition_keeps_others_and_does_not_mutate_input() -> None:
    base = set_condition([], "A", True, "Ok", now="t0")
    both = set_condition(base, "B", False, "No", observed_generation=3, now="t1")
    assert [c["type"] for c in both] == ["A", "B"]
    assert both[1]["observedGeneration"] == 3
    assert len(base) == 1


json_values = st.recursive(
    st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=3), children, max_size=4),
    ),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=5)


@given(json_objects, json_objects)
def test_merge_patch_turns_old_into_new(old: dict[str, object], new: dict[str, object]) -> None:
    assert apply_merge_patch(old, _merge_patch(old, new)) == new


@given(json_objects)
def test_merge_patch_of_equal_objects_is_empty(obj: dict[str, object]) -> None:
    assert _merge_patch(obj, obj) == {}
