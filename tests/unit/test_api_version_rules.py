"""Issue 13, point 6: a v1beta1 request is validated like a v1beta2 one. The API server checks
a request against the schema of the version it was written in, so each kind's v1beta1 spec must
carry exactly the v1beta2 spec's rules (CEL, patterns, bounds, enums, required fields). Both are
generated from shared models; this keeps a v1beta1-only model from dropping one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from capi_remote.api.crdgen import KINDS, Kind, crd

CHECKS = (
    "x-kubernetes-validations",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "enum",
    "format",
    "required",
    "type",
)
#: v1beta1-only spec fields (the reference provider's names) and their v1beta2 counterparts.
RENAMED = {".customCleanUpCommands": ".cleanUpCommands"}


def _rules(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, str, str]]:
    for check in CHECKS:
        if check in node:
            yield path, check, repr(node[check])
    for name, child in (node.get("properties") or {}).items():
        yield from _rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _rules(node["additionalProperties"], f"{path}{{}}")


def _spec_rules(kind: Kind, version: str) -> set[tuple[str, str, str]]:
    [served] = [v for v in crd(kind)["spec"]["versions"] if v["name"] == version]
    spec = served["schema"]["openAPIV3Schema"]["properties"]["spec"]
    found = set()
    for path, check, value in _rules(spec):
        for old, new in RENAMED.items():
            path = path.replace(old, new)
        found.add((path, check, value))
    return found


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_v1beta1_specs_carry_the_v1beta2_rules(kind: Kind) -> None:
    v1beta1, v1beta2 = _spec_rules(kind, "v1beta1"), _spec_rules(kind, "v1beta2")
    assert v1beta2 - v1beta1 == set(), "rules a v1beta1 request would skip"
    assert v1beta1 - v1beta2 == set(), "rules only v1beta1 has"


def test_the_comparison_sees_the_address_rule() -> None:
    """The check above compares what matters: the address rule is among the rules found."""
    [machines] = [k for k in KINDS if k.kind == "RemoteMachine"]
    rules = _spec_rules(machines, "v1beta1")
    assert any(path == ".address" and "isIP" in value for path, _, value in rules)
