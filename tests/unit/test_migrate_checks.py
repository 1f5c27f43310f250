"""``capi-remote migrate``'s checks and the validation it runs before replacing the CRDs: what a
k0smotron-run cluster looks like, and what each check says about it."""

from __future__ import annotations

from typing import Any

from capi_remote.api import crdgen
from capi_remote.migrate import checks, validation
from capi_remote.migrate.display import shown
from capi_remote.migrate.inventory import CAPI_CLUSTER_CRD, Inventory
from capi_remote.migrate.options import Options

JSONDict = dict[str, Any]
NS = "team-a"


def _meta(name: str, **extra: Any) -> JSONDict:
    return {"name": name, "namespace": NS, **extra}


def remote_machine(name: str, cluster: str = "demo", **spec: Any) -> JSONDict:
    return {
        "kind": "RemoteMachine",
        "metadata": _meta(
            name,
            labels={"cluster.x-k8s.io/cluster-name": cluster},
            ownerReferences=[{"kind": "Machine", "name": name}],
        ),
        "spec": {"address": "192.0.2.10", "port": 22, "sshKeyRef": {"name": "key"}, **spec},
    }


def machine(name: str, data: str | None = "boot") -> JSONDict:
    return {
        "kind": "Machine",
        "metadata": _meta(name),
        "spec": {"bootstrap": {"dataSecretName": data} if data else {}},
    }


def deployment(name: str, label: str, replicas: int = 1) -> JSONDict:
    return {
        "kind": "Deployment",
        "metadata": _meta(name, labels={"cluster.x-k8s.io/provider": label}),
        "spec": {"replicas": replicas},
    }


def inventory(**parts: Any) -> Inventory:
    capi = {"spec": {"versions": [{"name": "v1beta1"}, {"name": "v1beta2"}]}}
    crds = {kind.crd_name: crdgen.crd(kind) for kind in crdgen.KINDS}
    defaults: JSONDict = {
        "server_version": "v1.35.4",
        "crds": {**crds, CAPI_CLUSTER_CRD: capi},
        "clusters": [],
        "machines": [],
        "remote_machines": [],
        "pooled": [],
        "templates": [],
        "remote_clusters": [],
        "provider_deployments": [],
    }
    return Inventory(**{**defaults, **parts})


def messages(found: list[checks.Finding], level: str) -> list[str]:
    return [f.message for f in found if f.level == level]


def test_an_all_in_one_k0smotron_blocks_unless_the_operator_allows_stopping_it() -> None:
    inv = inventory(
        provider_deployments=[
            deployment("k0smotron-controller-manager", "k0sproject-k0smotron"),
            deployment("capi-controller-manager", "cluster-api"),
        ]
    )
    refused = checks.controllers(inv, Options())
    assert len(messages(refused, "error")) == 1
    assert "--stop-all-in-one" in messages(refused, "error")[0]
    allowed = checks.controllers(inv, Options(stop_all_in_one=True))
    assert not messages(allowed, "error")
    assert any("conversion webhook" in m for m in messages(allowed, "warn"))
    stopped = checks.reference_deployments(inv, Options(stop_all_in_one=True))
    assert [d["metadata"]["name"] for d in stopped] == ["k0smotron-controller-manager"]
    assert checks.reference_deployments(inv, Options()) == []


def test_only_the_infrastructure_provider_is_stopped_when_k0smotron_is_split() -> None:
    inv = inventory(
        provider_deployments=[
            deployment("infra", "infrastructure-k0sproject-k0smotron"),
            deployment("cp", "control-plane-k0sproject-k0smotron"),
            deployment("boot", "bootstrap-k0sproject-k0smotron"),
        ]
    )
    found = checks.controllers(inv, Options())
    assert not messages(found, "error")
    assert [d["metadata"]["name"] for d in checks.reference_deployments(inv, Options())] == [
        "infra"
    ]


def test_no_reference_deployment_is_a_warning_to_stop_it_by_hand() -> None:
    found = checks.controllers(inventory(), Options())
    assert any("does not run" in m for m in messages(found, "warn"))


def test_objects_the_new_validation_refuses_are_errors_naming_object_and_field() -> None:
    bad_port = remote_machine("bad-port", port=70000)
    bad_address = remote_machine("bad-address", address="10.0.0.300")
    no_key = remote_machine("no-key")
    del no_key["spec"]["sshKeyRef"]
    good = remote_machine("good", address="node-1.example.com")
    pooled = remote_machine("from-pool", pool="workers")
    del pooled["spec"]["sshKeyRef"]
    inv = inventory(remote_machines=[bad_port, bad_address, no_key, good, pooled])
    errors = messages(checks.invalid_objects(inv), "error")
    assert errors == [
        "RemoteMachine team-a/bad-port: .spec.port: must be at most 65535",
        "RemoteMachine team-a/bad-address: .spec.address: address must be an IPv4/IPv6 address "
        "or a DNS name",
        "RemoteMachine team-a/no-key: .spec: sshKeyRef is required unless passwordRef or "
        "provisionJob is set, or the machine comes from a pool",
    ]


def test_the_restated_rules_are_the_ones_in_the_crds() -> None:
    # If a rule's text changes in the models, the check would silently stop applying it.
    texts = set()

    def collect(schema: JSONDict) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            texts.add(rule["rule"])
        for sub in (schema.get("properties") or {}).values():
            collect(sub)

    for kind in crdgen.KINDS:
        for version in crdgen.crd(kind)["spec"]["versions"]:
            collect(version["schema"]["openAPIV3Schema"])
    assert set(validation._RULES) <= texts


def test_validation_has_a_budget_of_problems_per_object() -> None:
    schema = {"properties": {"spec": {"type": "object", "properties": {"items": {
        "type": "array", "items": {"type": "integer", "maximum": 1}}}}}}  # fmt: skip
    found = validation.problems({"spec": {"items": [5] * 1000}}, schema)
    assert len(found) == validation.MAX_PROBLEMS


def test_a_machine_with_bootstrap_data_not_provisioned_is_reported_mid_provisioning() -> None:
    waiting = remote_machine("waiting")
    provisioned = remote_machine("done")
    provisioned["status"] = {"initialization": {"provisioned": True}}
    failed = remote_machine("failed")
    failed["status"] = {"deprecated": {"v1beta1": {"failureReason": "ProvisionFailed"}}}
    no_data = remote_machine("no-data")
    inv = inventory(
        remote_machines=[waiting, provisioned, failed, no_data],
        machines=[machine("waiting"), machine("done"), machine("failed"), machine("no-data", None)],
    )
    found = messages(checks.mid_provisioning(inv), "warn")
    assert len(found) == 1 and "team-a/waiting" in found[0]


def test_a_reservation_that_will_not_be_adopted_is_a_warning() -> None:
    def host(name: str, reserved_for: str) -> JSONDict:
        return {
            "kind": "PooledRemoteMachine",
            "metadata": _meta(name),
            "spec": {"pool": "p", "machine": {"address": "192.0.2.10"}},
            "status": {"reserved": True, "machineRef": {"name": reserved_for}},
        }

    inv = inventory(
        remote_machines=[remote_machine("rm-1")],
        pooled=[host("kept", "rm-1"), host("stale", "gone")],
    )
    found = messages(checks.reservations(inv), "warn")
    assert len(found) == 1 and "team-a/stale" in found[0]


def test_versions_refuse_a_cluster_api_without_v1beta2_and_warn_of_v1beta1_storage() -> None:
    old_capi = {"spec": {"versions": [{"name": "v1beta1"}]}}
    crds = {kind.crd_name: crdgen.crd(kind) for kind in crdgen.KINDS}
    crds["remotemachines.infrastructure.cluster.x-k8s.io"]["status"] = {
        "storedVersions": ["v1beta1", "v1beta2"]
    }
    found = checks.versions(inventory(crds={**crds, CAPI_CLUSTER_CRD: old_capi}))
    assert any("Cluster API 1.11" in m for m in messages(found, "error"))
    assert any("stored as v1beta1" in m for m in messages(found, "warn"))
    assert any(
        "nothing to migrate" in m for m in messages(checks.versions(inventory(crds={})), "error")
    )


def test_tenant_text_is_made_safe_for_the_terminal() -> None:
    assert shown("rm\x1b]0;pwned\x07-1") == "rm?]0;pwned?-1"
    assert len(shown("x" * 10_000)) == 200
