"""Conversion between v1beta1 and v1beta2: exact on fixtures, lossless on generated objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given

from capi_remote.api import ConversionError, convert, from_dict, review_response
from capi_remote.api.crdgen import KINDS, Kind
from tests.unit.test_api_models import FIXTURE_IDS, FIXTURES, Fixture
from tests.unit.test_api_strategies import SETTINGS, objects

V1 = "infrastructure.cluster.x-k8s.io/v1beta1"
V2 = "infrastructure.cluster.x-k8s.io/v1beta2"


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_fixtures_convert_to_their_twin(fixture: Fixture) -> None:
    old, new = fixture.load("v1beta1"), fixture.load("v1beta2")
    assert convert(old, "v1beta2") == new
    assert convert(new, "v1beta1") == old
    assert convert(old, V2) == new  # the full apiVersion, as a ConversionReview names it


def test_convert_returns_a_copy() -> None:
    old = FIXTURES[0].load("v1beta1")
    before = copy.deepcopy(old)
    new = convert(old, "v1beta2")
    new["spec"]["cleanUpCommands"].append("more")
    assert old == before
    same = convert(old, "v1beta1")
    assert same == old and same is not old


def test_presence_is_preserved() -> None:
    """Absent stays absent and false stays false: no field appears out of nowhere."""
    bare = {"apiVersion": V1, "kind": "RemoteMachine", "metadata": {"name": "m"}, "spec": {}}
    assert convert(bare, "v1beta2") == {**bare, "apiVersion": V2}
    not_ready = {**bare, "status": {"ready": False}}
    assert convert(not_ready, "v1beta2")["status"] == {"initialization": {"provisioned": False}}
    only_conditions = {**bare, "apiVersion": V2, "status": {"conditions": []}}
    assert convert(only_conditions, "v1beta1")["status"] == {"v1beta2": {"conditions": []}}


def _lossless(kind: Kind, source: str, target: str) -> None:
    @SETTINGS
    @given(obj=objects(kind, source))
    def check(obj: dict[str, Any]) -> None:
        converted = convert(obj, target)
        # the result has exactly the target version's shape (strict: no stray keys)
        from_dict(kind.models[target], converted, strict=True)
        assert converted["metadata"] == obj["metadata"]
        assert convert(converted, source) == obj

    check()


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_v1beta1_to_v1beta2_and_back_is_lossless(kind: Kind) -> None:
    _lossless(kind, "v1beta1", "v1beta2")


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_v1beta2_to_v1beta1_and_back_is_lossless(kind: Kind) -> None:
    _lossless(kind, "v1beta2", "v1beta1")


@pytest.mark.parametrize(
    ("obj", "version", "message"),
    [
        ({"apiVersion": V1, "kind": "RemoteMachine"}, "v1alpha1", "unsupported apiVersion"),
        ({"apiVersion": "v1", "kind": "RemoteMachine"}, "v1beta2", "unsupported apiVersion"),
        ({"apiVersion": V1, "kind": "Machine"}, "v1beta2", "unsupported kind"),
        ({"apiVersion": V1}, "v1beta2", "unsupported kind"),
    ],
)
def test_unconvertible_input(obj: dict[str, Any], version: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert(obj, version)


def _review(objects: list[Any], desired: Any = V2) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "desiredAPIVersion": desired,
            "objects": objects,
        },
    }


def test_review_response_converts_every_object_in_order() -> None:
    objects = [f.load("v1beta1") for f in FIXTURES]
    answer = review_response(_review(objects))
    assert answer == {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "response": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "convertedObjects": [f.load("v1beta2") for f in FIXTURES],
            "result": {"status": "Success"},
        },
    }


@pytest.mark.parametrize(
    ("objects", "desired", "message"),
    [
        ([{"apiVersion": V1, "kind": "Pod"}], V2, "unsupported kind 'Pod'"),
        ([], None, "no request.desiredAPIVersion"),
        ([], "example.com/v1", "unsupported apiVersion"),
        (["not an object"], V2, "must be a list of objects"),
    ],
)
def test_review_response_reports_failures(objects: list[Any], desired: Any, message: str) -> None:
    response = review_response(_review(objects, desired))["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["convertedObjects"] == []
    assert response["result"]["status"] == "Failure"
    assert message in response["result"]["message"]


def test_review_without_uid_cannot_be_answered() -> None:
    with pytest.raises(ConversionError, match=r"no request\.uid"):
        review_response({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview"})
