"""The namespace-scoped install (kustomize/namespaced): it renders, grants the manager Roles in its
own namespace instead of ClusterRoles (only the metrics endpoint's review grant stays
cluster-wide), and, applied for real, lets the manager read Secrets in its namespace and not in
another one."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote.cli import build_parser
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.net import free_port
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.provider import install_crds
from tests.fixtures_tenant import service_account_token
from tests.support.leases import wait_until_leading

pytestmark = pytest.mark.integration

OVERLAY = Path(__file__).resolve().parents[2] / "kustomize" / "namespaced"
PLACEHOLDER = "tenant-a"  # the overlay's namespace and name prefix
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _render(toolchain: toolchain_module.Toolchain, directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(toolchain.kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def docs(toolchain: toolchain_module.Toolchain) -> list[dict[str, Any]]:
    return _render(toolchain, OVERLAY)


def test_overlay_has_no_cluster_wide_grant_but_the_metrics_reviews(
    docs: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in docs}
    assert "CustomResourceDefinition" not in kinds  # installed once, cluster-wide, by the admin
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(cluster_roles) == 1
    assert {(r["apiGroups"][0], r["resources"][0]) for r in cluster_roles[0]["rules"]} == {
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    }
    assert all(r["verbs"] == ["create"] for r in cluster_roles[0]["rules"])
    namespace = {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding")
    }
    assert len(namespace) == 1
    roles = [d for d in docs if d["kind"] == "Role"]
    assert any("secrets" in rule["resources"] for role in roles for rule in role["rules"]), (
        "the manager's rules are a Role"
    )


def test_manager_watches_its_own_namespace_without_the_webhook(
    docs: list[dict[str, Any]],
) -> None:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    source = env["CAPI_REMOTE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert source == "metadata.namespace"
    args = build_parser().parse_args(container["args"])
    assert args.webhook_port == 0 and not args.insecure_metrics
    mounts = {m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts == volumes == {"tmp"}


@pytest.fixture
def installed(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """The overlay's RBAC applied in a fresh namespace (its placeholder namespace and name prefix
    replaced, as a tenant's own overlay would); yields (namespace, the manager's user name)."""
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    rendered = yaml.safe_dump_all(_render(control_plane.toolchain, OVERLAY))
    docs = [d for d in yaml.safe_load_all(rendered.replace(PLACEHOLDER, namespace)) if d]
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    control_plane.kubectl("create", "namespace", namespace)
    control_plane.apply(rbac)
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    try:
        yield namespace, f"system:serviceaccount:{namespace}:{account}"
    finally:
        control_plane.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            input_text=yaml.safe_dump_all(rbac),
        )  # fmt: skip
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def _can(plane: ControlPlane, user: str, verb: str, resource: str, *scope: str) -> bool:
    answer = subprocess.run(
        [
            str(plane.toolchain.kubectl), "--kubeconfig", str(plane.kubeconfig),
            "auth", "can-i", verb, resource, *scope, f"--as={user}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr
    return answer.stdout.strip() == "yes"


def test_applied_rbac_stays_in_its_namespace(
    control_plane: ControlPlane, installed: tuple[str, str]
) -> None:
    namespace, user = installed
    other = ["-n", "default"]
    own = ["-n", namespace]
    assert _can(control_plane, user, "get", "secrets", *own)
    assert _can(control_plane, user, "list", "secrets", *own)
    assert not _can(control_plane, user, "get", "secrets", *other)
    assert not _can(control_plane, user, "list", "secrets", "--all-namespaces")
    assert _can(control_plane, user, "create", "jobs.batch", *own)
    assert not _can(control_plane, user, "create", "jobs.batch", *other)
    assert _can(control_plane, user, "patch", "machines.cluster.x-k8s.io", *own)
    assert not _can(control_plane, user, "get", "machines.cluster.x-k8s.io", *other)
    assert _can(control_plane, user, "create", "leases.coordination.k8s.io", *own)
    assert _can(control_plane, user, "create", "tokenreviews.authentication.k8s.io")


def test_controller_runs_on_the_namespaced_rbac_alone(
    control_plane: ControlPlane, installed: tuple[str, str], tmp_path: Path
) -> None:
    """The real process as the overlay's ServiceAccount, with its --namespace (from
    CAPI_REMOTE_NAMESPACE, as the overlay sets it): every informer lists and watches within its
    rights (no "forbidden") and it wins the Lease in its namespace."""
    namespace, user = installed
    if "remotemachines.infrastructure.cluster.x-k8s.io" not in control_plane.kubectl(
        "get", "crd", "-o", "name"
    ):
        install_crds(control_plane, free_port())
    token = service_account_token(control_plane, namespace, user.rpartition(":")[2])
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "manager", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "manager"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    process = ManagedProcess(
        "capi-remote",
        [
            sys.executable, "-m", "capi_remote.cli", "run",
            f"--kubeconfig={kubeconfig}", "--leader-elect", "--webhook-port=0",
            f"--health-addr=127.0.0.1:{free_port()}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            "--log-format=json",
        ],
        tmp_path / "controller.log",
        env={"POD_NAMESPACE": namespace, "CAPI_REMOTE_NAMESPACE": namespace},
    )  # fmt: skip
    process.start()
    try:
        wait_until_leading(control_plane, process, namespace)
        assert "forbidden" not in process.log.read_text(), process.describe_failure()
    finally:
        process.stop()
