"""Hypothesis strategies that generate API objects from the generated CRD schemas.

Generating from the schema (not the models) means the round-trip tests cover every field the CRDs
declare, in the shape the apiserver stores them: defaulted fields always present, optional fields
present or absent, enums, patterns and bounds respected. The tests at the bottom check the
generator itself.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capi_remote.api import from_dict
from capi_remote.api.crdgen import KINDS, Kind, crd

_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_./:", max_size=12)
_NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
_TIME = st.datetimes().map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_ADDRESSES = st.sampled_from(["10.0.0.1", "192.168.1.20", "::1", "fd00::5", "host.example.com"])
_DURATIONS = st.sampled_from(["1s", "30s", "90s", "1m30s", "10m", "1h", "2h30m"])

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _string(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    rules = " ".join(r["rule"] for r in schema.get("x-kubernetes-validations", []))
    if "isIP(self)" in rules:
        return _ADDRESSES
    if "duration(self)" in rules:
        return _DURATIONS
    if schema.get("format") == "date-time":
        return _TIME
    low = schema.get("minLength", 0)
    high = min(schema.get("maxLength", 12), 12)
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= schema.get("maxLength", 10**6)
        )
    return st.text(
        alphabet=string.ascii_letters + string.digits + " -./", min_size=low, max_size=high
    )


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a structural schema node, as the apiserver would store them."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return _string(schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1))
    if kind == "array":
        items = from_schema(schema["items"])
        size = min(schema.get("maxItems", 3), 3)
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys:
            return st.lists(items, max_size=size, unique_by=lambda i: tuple(i[k] for k in keys))
        return st.lists(items, max_size=size)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(_TEXT, _JSON, max_size=3)
    if "additionalProperties" in schema:
        return st.dictionaries(_NAME, from_schema(schema["additionalProperties"]), max_size=3)
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    always = {k: from_schema(v) for k, v in properties.items() if k in required or "default" in v}
    optional = {k: from_schema(v) for k, v in properties.items() if k not in always}
    strategy = st.fixed_dictionaries(always, optional=optional)
    minimum = schema.get("minProperties", 0)
    return strategy.filter(lambda d: len(d) >= minimum) if minimum else strategy


_OWNER = st.fixed_dictionaries(
    {
        "apiVersion": st.just("cluster.x-k8s.io/v1beta2"),
        "kind": st.just("Machine"),
        "name": _NAME,
        "uid": st.uuids().map(str),
    },
    optional={"controller": st.booleans(), "blockOwnerDeletion": st.booleans()},
)
_METADATA = st.fixed_dictionaries(
    {"name": _NAME, "namespace": _NAME},
    optional={
        "uid": st.uuids().map(str),
        "resourceVersion": st.integers(1, 10**6).map(str),
        "generation": st.integers(1, 100),
        "creationTimestamp": _TIME,
        "deletionTimestamp": _TIME,
        "deletionGracePeriodSeconds": st.integers(0, 30),
        "labels": st.dictionaries(_NAME, _NAME, max_size=3),
        "annotations": st.dictionaries(_NAME, _TEXT, max_size=3),
        "finalizers": st.lists(_NAME, max_size=2),
        "ownerReferences": st.lists(_OWNER, max_size=2),
        "managedFields": st.lists(st.dictionaries(_TEXT, _JSON, max_size=3), max_size=2),
    },
)


def objects(kind: Kind, version: str) -> st.SearchStrategy[dict[str, Any]]:
    """Whole objects of ``kind`` in ``version`` (apiVersion, kind, metadata, spec, status)."""
    versions = {v["name"]: v for v in crd(kind)["spec"]["versions"]}
    root = versions[version]["schema"]["openAPIV3Schema"]
    body = {
        k: v for k, v in root["properties"].items() if k not in ("apiVersion", "kind", "metadata")
    }
    required = set(root.get("required", []))
    return st.fixed_dictionaries(
        {
            "apiVersion": st.just(f"infrastructure.cluster.x-k8s.io/{version}"),
            "kind": st.just(kind.kind),
            "metadata": _METADATA,
            **{k: from_schema(v) for k, v in body.items() if k in required},
        },
        optional={k: from_schema(v) for k, v in body.items() if k not in required},
    )


@SETTINGS
@given(data=st.data())
def test_generated_objects_fit_the_models(data: st.DataObject) -> None:
    """Sanity of the generator: whatever it makes, the strict models accept."""
    for kind in KINDS:
        for version, model in kind.models.items():
            obj = data.draw(objects(kind, version), label=f"{kind.kind} {version}")
            from_dict(model, obj, strict=True)
