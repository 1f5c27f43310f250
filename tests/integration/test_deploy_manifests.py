"""The deployment artifacts against the real control plane: the kustomize overlays pass a
server-side dry-run, RBAC is least-privilege and sufficient (the controller runs on it alone), the
release is a clusterctl repository clusterctl itself accepts, and every cluster template renders
with clusterctl and passes a server-side dry-run.

What stands in for providers the control plane lacks: cert-manager's Issuer/Certificate CRDs are the
real ones (deploy/crds of the cert-manager Go module, from the Go module proxy); the kubeadm
bootstrap and control plane CRDs are the real ones from the pinned cluster-api module, given the
contract labels CAPI's kustomize adds; k0smotron's kinds (K0sWorkerConfig, K0sWorkerConfigTemplate,
K0smotronControlPlane) are minimal stand-in CRDs that accept any spec, because the Go module proxy
does not serve k0smotron's module (403) -- for those, only the wiring to them is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote.cli import build_parser
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.net import free_port
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.provider import CRD_DIR, install_crds, issue_webhook_certificate
from tests.support.clusterctl import K0SMOTRON_KINDS, run_clusterctl, stand_in_crd
from tests.support.leases import wait_until_leading

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROVIDER_LABEL = ("cluster.x-k8s.io/provider", "infrastructure-remote")
SYSTEM_NAMESPACE = "capi-remote-system"
MANAGER_SA = f"system:serviceaccount:{SYSTEM_NAMESPACE}:capi-remote-manager"
CERT_MANAGER_MODULE = "github.com/cert-manager/cert-manager@v1.21.2"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# -- helpers ---------------------------------------------------------------------------------


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kustomize(toolchain: toolchain_module.Toolchain, overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(toolchain.kubectl), "kustomize", str(REPO / "kustomize" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return _documents(proc.stdout)


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _manager_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "manager"]
    found: dict[str, Any] = container
    return found


def _dry_run(plane: ControlPlane, docs: list[dict[str, Any]]) -> str:
    """Server-side apply, dry-run, as the field manager that installed our CRDs for the session
    (ControlPlane.apply): the shipped service-based conversion settings then replace the session's
    URL-based ones instead of being merged with them."""
    return plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump_all(docs)
    )


def _go_module_dir(module: str) -> Path:
    """Download (or find in the module cache) a Go module; its source tree holds CRD files."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"go mod download {module} failed: {proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def _clusterctl(
    toolchain: toolchain_module.Toolchain, plane: ControlPlane, config: Path, *args: str
) -> str:
    return run_clusterctl(toolchain.clusterctl, plane.kubeconfig, config, *args).stdout


def _new_namespace(plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    plane.kubectl("create", "namespace", name)
    return name


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_docs(toolchain: toolchain_module.Toolchain) -> list[dict[str, Any]]:
    return _kustomize(toolchain, "default")


@pytest.fixture(scope="module")
def dev_docs(toolchain: toolchain_module.Toolchain) -> list[dict[str, Any]]:
    return _kustomize(toolchain, "dev")


@pytest.fixture(scope="module")
def release(
    toolchain: toolchain_module.Toolchain, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``make release-manifests`` into a temporary directory; returns the version directory."""
    out = tmp_path_factory.mktemp("release")
    make = subprocess.run(
        ["make", "release-manifests", f"RELEASE_DIR={out}", f"KUBECTL={toolchain.kubectl}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert make.returncode == 0, make.stdout + make.stderr
    (version_dir,) = (out / "infrastructure-remote").iterdir()
    return version_dir


@pytest.fixture(scope="module")
def clusterctl_config(release: Path) -> Path:
    """A clusterctl.yaml naming the release as a local repository, as docs/deployment.md shows."""
    config = release.parent.parent / "clusterctl.yaml"
    provider = {
        "name": "remote",
        "type": "InfrastructureProvider",
        "url": (release / "infrastructure-components.yaml").as_uri(),
    }
    config.write_text(yaml.safe_dump({"providers": [provider]}))
    return config


@pytest.fixture(scope="module")
def prerequisites(control_plane: ControlPlane) -> None:
    """CRDs of cert-manager, kubeadm, k0smotron stand-ins and ours; the system namespace."""
    cert_manager = _go_module_dir(CERT_MANAGER_MODULE) / "deploy" / "crds"
    crds = [
        yaml.safe_load((cert_manager / f"cert-manager.io_{plural}.yaml").read_text())
        for plural in ("issuers", "certificates")
    ]
    cluster_api = _go_module_dir(f"sigs.k8s.io/cluster-api@{toolchain_module.CLUSTER_API_VERSION}")
    for bases in ("bootstrap/kubeadm/config/crd/bases", "controlplane/kubeadm/config/crd/bases"):
        for path in sorted((cluster_api / bases).glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            crd["metadata"].setdefault("labels", {}).update(
                {"cluster.x-k8s.io/v1beta1": "v1beta1", "cluster.x-k8s.io/v1beta2": "v1beta2"}
            )
            crds.append(crd)
    crds += [stand_in_crd(group, kind) for group, kind in K0SMOTRON_KINDS]
    control_plane.apply(crds)
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    # Ours only if absent: the session's controller fixture points them at its live webhook.
    ours = control_plane.kubectl("get", "crd", "-o", "name")
    if "remotemachines.infrastructure.cluster.x-k8s.io" not in ours:
        install_crds(control_plane, free_port())
    namespaces = control_plane.kubectl("get", "namespace", "-o", "name")
    if f"namespace/{SYSTEM_NAMESPACE}" not in namespaces.split():
        control_plane.kubectl("create", "namespace", SYSTEM_NAMESPACE)


@pytest.fixture(scope="module")
def installed_rbac(
    control_plane: ControlPlane, prerequisites: None, default_docs: list[dict[str, Any]]
) -> Iterator[None]:
    """The shipped ServiceAccount, roles and bindings, applied for real (removed afterwards)."""
    rbac = [d for d in default_docs if d["kind"] in RBAC_KINDS]
    control_plane.apply(rbac)
    try:
        yield
    finally:
        control_plane.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            "-",
            input_text=yaml.safe_dump_all(rbac),
        )


# -- kustomize -------------------------------------------------------------------------------


def test_default_overlay_passes_server_side_dry_run(
    control_plane: ControlPlane, prerequisites: None, default_docs: list[dict[str, Any]]
) -> None:
    out = _dry_run(control_plane, default_docs)
    assert out.count("(server dry run)") == len(default_docs), out


def test_dev_overlay_runs_the_local_image_with_debug_logs(
    control_plane: ControlPlane, prerequisites: None, dev_docs: list[dict[str, Any]]
) -> None:
    out = _dry_run(control_plane, dev_docs)
    assert out.count("(server dry run)") == len(dev_docs), out
    container = _manager_container(dev_docs)
    assert container["image"] == "localhost/capi-remote:dev"
    assert container["imagePullPolicy"] == "Never"
    assert "--log-level=debug" in container["args"]
    assert _only(dev_docs, "Deployment")["spec"]["replicas"] == 1


def test_every_generated_crd_is_deployed(default_docs: list[dict[str, Any]]) -> None:
    generated = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRD_DIR.glob("*.yaml")}
    deployed = {
        d["metadata"]["name"] for d in default_docs if d["kind"] == "CustomResourceDefinition"
    }
    assert generated == deployed, "list new CRD files in manifests/kustomization.yaml"


def test_every_object_carries_the_provider_label(
    default_docs: list[dict[str, Any]], dev_docs: list[dict[str, Any]], release: Path
) -> None:
    components = _documents((release / "infrastructure-components.yaml").read_text())
    key, value = PROVIDER_LABEL
    for doc in default_docs + dev_docs + components:
        labels = doc["metadata"].get("labels", {})
        assert labels.get(key) == value, f"{doc['kind']}/{doc['metadata']['name']}"
    pod = _only(default_docs, "Deployment")["spec"]["template"]["metadata"]
    assert pod["labels"].get(key) == value


def test_conversion_webhook_is_wired_end_to_end(default_docs: list[dict[str, Any]]) -> None:
    """CRD service ref -> Service -> container port; Certificate -> Secret -> mount; CA."""
    service = _only(default_docs, "Service")
    certificate = _only(default_docs, "Certificate")
    issuer = _only(default_docs, "Issuer")
    deployment = _only(default_docs, "Deployment")
    container = _manager_container(default_docs)
    webhook_crds = [
        d
        for d in default_docs
        if d["kind"] == "CustomResourceDefinition"
        and d["spec"].get("conversion", {}).get("strategy") == "Webhook"
    ]
    assert webhook_crds, "no CRD has a conversion webhook"
    cert_ref = f"{certificate['metadata']['namespace']}/{certificate['metadata']['name']}"
    for crd in webhook_crds:
        target = crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
        assert (target["namespace"], target["name"]) == (
            service["metadata"]["namespace"],
            service["metadata"]["name"],
        )
        assert target.get("port", 443) == service["spec"]["ports"][0]["port"]
        assert target["path"] == "/convert"
        assert crd["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == cert_ref

    args = build_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == args.webhook_port
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    fqdn = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert fqdn in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert "selfSigned" in issuer["spec"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secret = volumes[mounts[str(args.webhook_cert_dir)]]["secret"]["secretName"]
    assert secret == certificate["spec"]["secretName"]


def test_manager_deployment_follows_the_provider_contract(
    default_docs: list[dict[str, Any]],
) -> None:
    deployment = _only(default_docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _manager_container(default_docs)
    # The arguments are ones `capi-remote run` accepts (argparse exits on unknown flags).
    args = build_parser().parse_args(container["args"])
    assert args.command == "run" and args.leader_elect and args.log_format == "json"
    health_port = int(args.health_addr.rpartition(":")[2])
    metrics_port = int(args.metrics_address.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["healthz"] == health_port and ports["metrics"] == metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    (env,) = [e for e in container["env"] if e["name"] == "POD_NAMESPACE"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= container["resources"].keys()
    assert pod["serviceAccountName"] == _only(default_docs, "ServiceAccount")["metadata"]["name"]


# -- RBAC ------------------------------------------------------------------------------------


def test_rbac_has_no_wildcards_and_never_changes_secrets(
    default_docs: list[dict[str, Any]],
) -> None:
    roles = [d for d in default_docs if d["kind"] in ("ClusterRole", "Role")]
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
                assert not any("*" in item for item in rule.get(field, []))
    secrets = [
        rule
        for role in roles
        for rule in role["rules"]
        if "" in rule["apiGroups"] and "secrets" in rule["resources"]
    ]
    # Read, plus create/delete for provisionJob mode's own Secrets; never update or patch
    # (those Secrets are immutable), so a user's Secret is never changed.
    assert secrets and all(
        set(r["verbs"]) <= {"get", "list", "watch", "create", "delete"} for r in secrets
    )
    # Leases only in the namespaced Role, i.e. only in the manager's own namespace.
    for role in roles:
        grants_leases = any("leases" in rule["resources"] for rule in role["rules"])
        assert grants_leases == (role["kind"] == "Role"), role["metadata"]["name"]
    # Every status subresource granted exists, and every kind with one is covered.
    crds = [d for d in default_docs if d["kind"] == "CustomResourceDefinition"]
    with_status = {
        f"{crd['spec']['names']['plural']}/status"
        for crd in crds
        if any("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])
    }
    granted = {
        resource
        for rule in _named(default_docs, "ClusterRole", "capi-remote-manager")["rules"]
        for resource in rule["resources"]
        if resource.endswith("/status")
    }
    assert granted == with_status


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [
        ("list", "secrets", "default", True),
        ("watch", "configmaps", "default", True),
        ("create", "secrets", "default", True),  # provisionJob mode's Secrets
        ("update", "secrets", "default", False),
        ("patch", "secrets", "default", False),
        ("delete", "secrets", "default", True),
        ("list", "pods", "default", True),  # provisionJob mode: termination messages
        ("delete", "pods", "default", False),
        ("patch", "remotemachines.infrastructure.cluster.x-k8s.io", "default", True),
        ("update", "pooledremotemachines.infrastructure.cluster.x-k8s.io", "default", True),
        ("list", "remotemachinetemplates.infrastructure.cluster.x-k8s.io", "default", True),
        ("patch", "machines.cluster.x-k8s.io", "default", True),
        ("delete", "machines.cluster.x-k8s.io", "default", False),
        ("watch", "clusters.cluster.x-k8s.io", "default", True),
        ("create", "events", "default", True),
        ("create", "events.events.k8s.io", "default", True),
        ("create", "jobs.batch", "default", True),
        ("create", "leases.coordination.k8s.io", SYSTEM_NAMESPACE, True),
        ("update", "leases.coordination.k8s.io", SYSTEM_NAMESPACE, True),
        ("create", "leases.coordination.k8s.io", "default", False),
        ("create", "pods", "default", False),
        ("get", "nodes", "", False),
        # The metrics endpoint's authentication and authorization.
        ("create", "tokenreviews.authentication.k8s.io", "", True),
        ("create", "subjectaccessreviews.authorization.k8s.io", "", True),
        ("list", "subjectaccessreviews.authorization.k8s.io", "", False),
    ],
)
def test_rbac_grants_what_the_manager_needs_and_no_more(
    control_plane: ControlPlane,
    installed_rbac: None,
    verb: str,
    resource: str,
    namespace: str,
    allowed: bool,
) -> None:
    scope = ["-n", namespace] if namespace else []
    proc = subprocess.run(
        [
            str(control_plane.toolchain.kubectl),
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "auth",
            "can-i",
            verb,
            resource,
            *scope,
            f"--as={MANAGER_SA}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip() == ("yes" if allowed else "no"), proc.stderr


def test_controller_runs_on_the_shipped_rbac_alone(
    control_plane: ControlPlane, installed_rbac: None, tmp_path: Path
) -> None:
    """The real process, authenticated as the manager's ServiceAccount: its caches sync (list and
    watch on every kind it informs) and it wins the Lease in its namespace. A private watch filter
    and Lease name keep it out of the way of other tests' controllers."""
    token = control_plane.kubectl(
        "create", "token", "capi-remote-manager", "-n", SYSTEM_NAMESPACE, "--duration=10m"
    ).strip()
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "manager", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "manager"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    cert_dir = issue_webhook_certificate(control_plane, tmp_path / "certs")
    lease = f"rbac-check-{uuid.uuid4().hex[:8]}"
    health = free_port()
    process = ManagedProcess(
        "capi-remote",
        [
            sys.executable,
            "-m",
            "capi_remote.cli",
            "run",
            f"--kubeconfig={kubeconfig}",
            "--leader-elect",
            f"--leader-election-id={lease}",
            f"--watch-filter={lease}",
            f"--webhook-port={free_port()}",
            f"--webhook-cert-dir={cert_dir}",
            f"--health-addr=127.0.0.1:{health}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            "--log-format=json",
        ],
        tmp_path / "controller.log",
        env={"POD_NAMESPACE": SYSTEM_NAMESPACE},
    )
    process.start()
    try:
        wait_until_leading(control_plane, process, SYSTEM_NAMESPACE, lease)
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=5) as response:
            assert response.status == 200
        assert "is forbidden" not in process.log.read_text(), process.describe_failure()
    finally:
        process.stop()


# -- clusterctl ------------------------------------------------------------------------------


def test_release_is_a_clusterctl_repository(
    control_plane: ControlPlane, prerequisites: None, release: Path
) -> None:
    files = {p.name for p in release.iterdir()}
    assert {"infrastructure-components.yaml", "metadata.yaml", "cluster-template.yaml"} <= files
    assert {p.name for p in (REPO / "manifests/clusterctl/templates").iterdir()} <= files

    metadata = yaml.safe_load((release / "metadata.yaml").read_text())
    assert metadata["apiVersion"] == "clusterctl.cluster.x-k8s.io/v1alpha3"
    assert metadata["kind"] == "Metadata"
    major, minor, _ = release.name.lstrip("v").split(".")
    assert {"major": int(major), "minor": int(minor), "contract": "v1beta2"} in metadata[
        "releaseSeries"
    ]

    components = _documents((release / "infrastructure-components.yaml").read_text())
    namespaces = [d for d in components if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [SYSTEM_NAMESPACE]
    namespaced = set()
    for line in control_plane.kubectl("api-resources", "--no-headers").splitlines():
        *_, api_version, is_namespaced, kind = line.split()
        if is_namespaced == "true":
            namespaced.add((api_version.rpartition("/")[0], kind))
    for doc in components:
        key = (doc["apiVersion"].rpartition("/")[0], doc["kind"])
        if key in namespaced:
            assert doc["metadata"].get("namespace") == SYSTEM_NAMESPACE, key
        else:
            assert "namespace" not in doc["metadata"], key
    image = _manager_container(components)["image"]
    assert image == f"ghcr.io/capi-remote/capi-remote:{release.name}"


def test_clusterctl_reads_the_release(
    toolchain: toolchain_module.Toolchain,
    control_plane: ControlPlane,
    release: Path,
    clusterctl_config: Path,
) -> None:
    """clusterctl's own validation of provider components (one namespace, labels, variables)."""
    described = _clusterctl(
        toolchain,
        control_plane,
        clusterctl_config,
        "generate",
        "provider",
        "--infrastructure",
        f"remote:{release.name}",
        "--describe",
    )
    assert f"TargetNamespace:    {SYSTEM_NAMESPACE}" in described
    components = _documents(
        _clusterctl(
            toolchain,
            control_plane,
            clusterctl_config,
            "generate",
            "provider",
            "--infrastructure",
            f"remote:{release.name}",
        )
    )
    assert {d["kind"] for d in components} >= {"Namespace", "Deployment", "Certificate"}


@pytest.mark.parametrize("flavor", ["", "kubeadm", "pool"])
def test_cluster_template_renders_and_passes_dry_run(
    toolchain: toolchain_module.Toolchain,
    control_plane: ControlPlane,
    prerequisites: None,
    release: Path,
    clusterctl_config: Path,
    flavor: str,
) -> None:
    namespace = _new_namespace(control_plane)
    try:
        rendered = _clusterctl(
            toolchain,
            control_plane,
            clusterctl_config,
            "generate",
            "cluster",
            "c1",
            "--infrastructure",
            f"remote:{release.name}",
            "--flavor",
            flavor,
            "--target-namespace",
            namespace,
            "--kubernetes-version",
            "v1.33.4",
            "--worker-machine-count",
            "2",
        )
        assert "${" not in rendered
        docs = _documents(rendered)
        kinds = {d["kind"] for d in docs}
        assert {"Cluster", "RemoteCluster"} <= kinds
        assert kinds & {"RemoteMachine", "RemoteMachineTemplate"}
        assert all(d["metadata"]["namespace"] == namespace for d in docs)
        out = _dry_run(control_plane, docs)
        assert out.count("(server dry run)") == len(docs), out
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_topology_cluster_validates_against_the_cluster_class(
    toolchain: toolchain_module.Toolchain,
    control_plane: ControlPlane,
    prerequisites: None,
    release: Path,
    clusterctl_config: Path,
) -> None:
    """clusterctl adds clusterclass-remote.yaml to the topology flavor; once CAPI has reconciled the
    class for real, a dry-run of the Cluster checks its variables against the class's schemas."""
    namespace = _new_namespace(control_plane)
    try:
        docs = _documents(
            _clusterctl(
                toolchain,
                control_plane,
                clusterctl_config,
                "generate",
                "cluster",
                "c1",
                "--infrastructure",
                f"remote:{release.name}",
                "--flavor",
                "topology",
                "--target-namespace",
                namespace,
                "--kubernetes-version",
                "v1.33.4",
            )
        )
        cluster = _only(docs, "Cluster")
        control_plane.apply([d for d in docs if d is not cluster])
        for condition in ("VariablesReady", "RefVersionsUpToDate"):
            control_plane.kubectl(
                "wait",
                "-n",
                namespace,
                "clusterclass/remote",
                "--timeout=60s",
                f"--for=condition={condition}",
            )
        proc = subprocess.run(
            [
                str(toolchain.kubectl),
                "--kubeconfig",
                str(control_plane.kubeconfig),
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                "-",
            ],
            input=yaml.safe_dump(cluster),
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr, proc.stderr
        # The class's schema is really applied: an empty endpoint host is refused.
        cluster["spec"]["topology"]["variables"][0]["value"]["host"] = ""
        with pytest.raises(ControlPlaneError, match="controlPlaneEndpoint"):
            _dry_run(control_plane, [cluster])
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
