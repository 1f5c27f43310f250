"""What the check step finds, before anything changes: read-only, from one :class:`Inventory`.

Findings are ``info`` (shown), ``warn`` (shown, the run goes on) or ``error`` (shown; a real run
stops before its first change, a dry run still prints the whole plan). Every text that carries a
tenant-written value is made safe by the caller's :func:`display.shown`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from capi_remote import __version__
from capi_remote.api import crdgen
from capi_remote.migrate import validation
from capi_remote.migrate.inventory import (
    CAPI_CLUSTER_CRD,
    CRD_NAMES,
    PROVIDER_LABEL,
    Inventory,
    key,
    provisioned,
)
from capi_remote.migrate.options import Options

JSONDict = dict[str, Any]
Level = Literal["info", "warn", "error"]
Role = Literal["all-in-one", "infrastructure", "other"]
REFERENCE_MARK = "k0smotron"


@attrs.frozen
class Finding:
    level: Level
    topic: str
    message: str


def provider_label(obj: JSONDict) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(PROVIDER_LABEL, ""))


def reference_role(deployment: JSONDict) -> Role | None:
    """What a Deployment labelled as k0smotron's runs, from its provider label: k0smotron's own
    kustomize labels the all-in-one manager ``k0sproject-k0smotron``; clusterctl labels each
    provider ``<type>-<name>``. None: not k0smotron's."""
    label = provider_label(deployment)
    if REFERENCE_MARK not in label:
        return None
    if label.startswith("infrastructure-"):
        return "infrastructure"
    if label.startswith(("bootstrap-", "control-plane-")):
        return "other"
    return "all-in-one"


def reference_deployments(inventory: Inventory, options: Options) -> list[JSONDict]:
    """The Deployments the migration stops: infrastructure providers, and all-in-one ones when
    the operator allowed it."""
    stop: tuple[Role, ...] = (
        ("infrastructure", "all-in-one") if options.stop_all_in_one else ("infrastructure",)
    )
    return [d for d in inventory.provider_deployments if reference_role(d) in stop]


def our_deployments(inventory: Inventory) -> list[JSONDict]:
    return [d for d in inventory.provider_deployments if provider_label(d) == crdgen.PROVIDER_LABEL]


def run(inventory: Inventory, options: Options) -> list[Finding]:
    return [
        *versions(inventory),
        *controllers(inventory, options),
        *invalid_objects(inventory),
        *mid_provisioning(inventory),
        *reservations(inventory),
    ]


def versions(inventory: Inventory) -> list[Finding]:
    found = [
        Finding("info", "versions", f"capi-remote {__version__}"),
        Finding("info", "versions", f"API server {inventory.server_version}"),
    ]
    capi = inventory.crds.get(CAPI_CLUSTER_CRD)
    served = {v.get("name") for v in (capi or {}).get("spec", {}).get("versions", [])}
    if "v1beta2" not in served:
        found.append(
            Finding(
                "error",
                "versions",
                "Cluster API does not serve cluster.x-k8s.io/v1beta2: capi-remote needs Cluster "
                "API 1.11 or later",
            )
        )
    installed = [inventory.crds[name] for name in CRD_NAMES if name in inventory.crds]
    if not installed:
        found.append(Finding("error", "versions", "no RemoteMachine CRDs: nothing to migrate"))
    for crd in installed:
        label = provider_label(crd) or "(no provider label)"
        name = crd["metadata"]["name"]
        found.append(Finding("info", "versions", f"CRD {name}: {label}"))
        stored = (crd.get("status") or {}).get("storedVersions") or []
        if "v1beta1" in stored:
            found.append(
                Finding(
                    "warn",
                    "versions",
                    f"CRD {name} may still hold objects stored as v1beta1: until capi-remote's "
                    "conversion webhook runs (the controller step), they cannot be read as v1beta2",
                )
            )
    return found


def controllers(inventory: Inventory, options: Options) -> list[Finding]:
    found: list[Finding] = []
    for deployment in inventory.provider_deployments:
        role = reference_role(deployment)
        if role is None:
            continue
        replicas = (deployment.get("spec") or {}).get("replicas", 1)
        where = f"Deployment {key(deployment)} ({provider_label(deployment)}, {replicas} replicas)"
        if role == "other":
            found.append(Finding("info", "controllers", f"{where}: left running"))
        elif role == "infrastructure":
            found.append(Finding("info", "controllers", f"{where}: the reference; stopped"))
        elif options.stop_all_in_one:
            found.append(
                Finding(
                    "warn",
                    "controllers",
                    f"{where} runs all of k0smotron: stopping it also stops its bootstrap and "
                    "control-plane providers, its conversion webhook and its ProviderID controller",
                )
            )
        else:
            found.append(
                Finding(
                    "error",
                    "controllers",
                    f"{where} runs all of k0smotron, not only its Remote Machine provider: "
                    "pass --stop-all-in-one to stop it (its bootstrap and control-plane "
                    "providers, conversion webhook and ProviderID controller stop too)",
                )
            )
    if not any(
        reference_role(d) in ("infrastructure", "all-in-one")
        for d in inventory.provider_deployments
    ):
        found.append(
            Finding(
                "warn",
                "controllers",
                "no Deployment labelled as k0smotron's: make sure its Remote Machine controller "
                "does not run (both act on the same objects)",
            )
        )
    return found


def _schema(kind: crdgen.Kind) -> JSONDict:
    versions = crdgen.crd(kind)["spec"]["versions"]
    schema: JSONDict = next(v for v in versions if v["name"] == "v1beta2")["schema"]
    return dict(schema["openAPIV3Schema"])


def invalid_objects(inventory: Inventory) -> list[Finding]:
    schemas = {kind.kind: _schema(kind) for kind in crdgen.KINDS}
    found: list[Finding] = []
    for obj in (
        *inventory.remote_machines,
        *inventory.pooled,
        *inventory.templates,
        *inventory.remote_clusters,
    ):
        schema = schemas.get(str(obj.get("kind")))
        if schema is None:
            continue
        for problem in validation.problems(obj, schema):
            found.append(Finding("error", "validation", f"{obj.get('kind')} {key(obj)}: {problem}"))
    return found


def mid_provisioning(inventory: Inventory) -> list[Finding]:
    """Machines the reference may be bootstrapping right now: not provisioned, with bootstrap
    data, not failed. After the switch capi-remote runs their bootstrap from the first step."""
    found: list[Finding] = []
    for rm in inventory.remote_machines:
        if provisioned(rm) or (rm.get("metadata") or {}).get("deletionTimestamp"):
            continue
        machine = inventory.machine_of(rm)
        data = ((machine or {}).get("spec") or {}).get("bootstrap", {}).get("dataSecretName")
        failed = ((rm.get("status") or {}).get("deprecated") or {}).get("v1beta1", {})
        if data and not failed.get("failureReason"):
            found.append(
                Finding(
                    "warn",
                    "provisioning",
                    f"RemoteMachine {key(rm)} is not provisioned yet and has bootstrap data: the "
                    "reference may be running its bootstrap; capi-remote starts it again from "
                    "the first command unless the host is cleaned or shows it finished",
                )
            )
    return found


def reservations(inventory: Inventory) -> list[Finding]:
    """Reservations the reference kept in status that capi-remote's pool reconciler will not
    adopt (it adopts those whose RemoteMachine exists with the host's address)."""
    machines = {key(rm): rm for rm in inventory.remote_machines}
    found: list[Finding] = []
    for host in inventory.pooled:
        status = host.get("status") or {}
        ref = status.get("machineRef") or {}
        if not status.get("reserved") or (host.get("spec") or {}).get("claim"):
            continue
        namespace = ref.get("namespace") or host["metadata"].get("namespace")
        rm = machines.get(f"{namespace}/{ref.get('name')}")
        address = ((host.get("spec") or {}).get("machine") or {}).get("address")
        if rm is None or (rm.get("spec") or {}).get("address") != address:
            found.append(
                Finding(
                    "warn",
                    "reservations",
                    f"PooledRemoteMachine {key(host)} is reserved for {ref.get('name')}, which "
                    "does not exist or has another address: the host will count as free",
                )
            )
    return found


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
