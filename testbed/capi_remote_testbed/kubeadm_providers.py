"""The kubeadm bootstrap (CABPK) and kubeadm control-plane (KCP) providers on the local control
plane, for the e2e flows that need a real control-plane provider (ClusterClass topology: the
topology controller creates MachineDeployments only once the control plane is initialized).

Both managers come from the same Cluster API module and version as the core manager
(``bootstrap/kubeadm`` and ``controlplane/kubeadm`` of ``sigs.k8s.io/cluster-api``), built from
the wrapper module ``toolchain/capi-kubeadm`` and cached like every other component; their
``config/`` (CRDs, webhook manifests) is kept beside the binaries. ``TEST_ASSET_<NAME>`` or
``$KUBEBUILDER_ASSETS`` choose other binaries, as for the rest of the toolchain.

They run as processes on loopback next to the CAPI core manager, each with its own webhook server
(certificate from the plane's CA) and with the CRDs' conversion webhooks and the
(Validating|Mutating)WebhookConfigurations rewritten to ``https://127.0.0.1:<port>``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from capi_remote_testbed import capiconfig, toolchain
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.locks import build_lock
from capi_remote_testbed.net import free_port, http_ok
from capi_remote_testbed.processes import ManagedProcess, log_tail

_MODULE_DIR = "capi-kubeadm"
BOOTSTRAP = toolchain.Component(
    name="capi-kubeadm-bootstrap",
    version=toolchain.CLUSTER_API_VERSION,
    module_dir=_MODULE_DIR,
    packages=("sigs.k8s.io/cluster-api/bootstrap/kubeadm",),
)
CONTROL_PLANE = toolchain.Component(
    name="capi-kubeadm-control-plane",
    version=toolchain.CLUSTER_API_VERSION,
    module_dir=_MODULE_DIR,
    packages=("sigs.k8s.io/cluster-api/controlplane/kubeadm",),
)
# Where each provider's config/ lives in the cluster-api module.
_CONFIG_SOURCES = {
    BOOTSTRAP.name: "bootstrap/kubeadm/config",
    CONTROL_PLANE.name: "controlplane/kubeadm/config",
}
# Both packages build a binary named "kubeadm"; the cached files get clear names.
_BINARIES = {
    BOOTSTRAP.name: "capi-kubeadm-bootstrap-manager",
    CONTROL_PLANE.name: "capi-kubeadm-control-plane-manager",
}


@attrs.frozen
class KubeadmProviders:
    """Paths of both managers and their config/ directories (CRDs and webhook manifests)."""

    bootstrap_manager: Path
    bootstrap_config: Path
    control_plane_manager: Path
    control_plane_config: Path


def _build(component: toolchain.Component, log: Callable[[str], None]) -> None:
    target = component.cache_dir
    binary = _BINARIES[component.name]
    with build_lock(target.with_suffix(".lock")):
        if (target / binary).is_file() and (target / "config").is_dir():
            return
        log(
            f"building {component.name} {component.version} into {target} "
            "(a cold build takes a few minutes on 2 cores)"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            module = toolchain.TOOLCHAIN_DIR / component.module_dir
            toolchain._run_go(
                [
                    "build",
                    "-trimpath",
                    "-ldflags",
                    component.ldflags,
                    "-o",
                    str(staging / binary),
                    *component.packages,
                ],
                cwd=module,
                what=f"building {component.name} {component.version}",
            )
            listing = toolchain._run_go(
                ["mod", "download", "-json", f"sigs.k8s.io/cluster-api@{component.version}"],
                cwd=module,
                what="locating the cluster-api module",
            )
            source = Path(json.loads(listing)["Dir"]) / _CONFIG_SOURCES[component.name]
            shutil.copytree(source, staging / "config")
            for path in (staging / "config").rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def ensure(log: Callable[[str], None] = print) -> KubeadmProviders:
    """Find or build both managers (``TEST_ASSET_CAPI_KUBEADM_BOOTSTRAP_MANAGER`` and
    ``TEST_ASSET_CAPI_KUBEADM_CONTROL_PLANE_MANAGER`` choose other binaries; their config/ always
    comes from the cache, as for the core manager)."""
    paths: dict[str, Path] = {}
    for component in (BOOTSTRAP, CONTROL_PLANE):
        _build(component, log)
        binary = _BINARIES[component.name]
        paths[component.name] = toolchain._from_environment(binary) or component.cache_dir / binary
    return KubeadmProviders(
        bootstrap_manager=paths[BOOTSTRAP.name],
        bootstrap_config=BOOTSTRAP.cache_dir / "config",
        control_plane_manager=paths[CONTROL_PLANE.name],
        control_plane_config=CONTROL_PLANE.cache_dir / "config",
    )


@attrs.define
class RunningProviders:
    """Both managers running against a control plane; :meth:`stop` ends them."""

    processes: list[ManagedProcess] = attrs.field(factory=list)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each manager's log, for failure messages."""
        return "\n".join(
            f"--- {process.name} ({process.log}):\n{log_tail(process.log, lines)}"
            for process in self.processes
        )


def _start_manager(
    plane: ControlPlane,
    name: str,
    binary: Path,
    config: Path,
    feature_gates: str,
    ready_timeout: float,
) -> ManagedProcess:
    webhook_port, health_port = free_port(), free_port()
    cert_dir = plane.workdir / f"{name}-webhook"
    cert_dir.mkdir(parents=True, exist_ok=True)
    serving = plane.ca.issue(f"{name}-webhook", hosts=("127.0.0.1", "localhost"), server=True)
    (cert_dir / "tls.crt").write_bytes(serving.cert_pem)
    (cert_dir / "tls.key").touch(mode=0o600)
    (cert_dir / "tls.key").write_bytes(serving.key_pem)
    documents = capiconfig.crds(config, plane.ca.cert_pem, webhook_port, contract_labels=True)
    plane.apply(documents + capiconfig.webhooks(config, plane.ca.cert_pem, webhook_port, name))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{crd['metadata']['name']}" for crd in documents],
    )
    process = ManagedProcess(
        name,
        [
            str(binary),
            f"--kubeconfig={plane.kubeconfig}",
            f"--webhook-port={webhook_port}",
            f"--webhook-cert-dir={cert_dir}",
            f"--health-addr=127.0.0.1:{health_port}",
            f"--diagnostics-address=127.0.0.1:{free_port()}",
            "--insecure-diagnostics",
            f"--feature-gates={feature_gates}",
            "--leader-elect=false",
        ],
        plane.workdir / "logs" / f"{name}.log",
        env={"POD_NAMESPACE": f"{name}-system"},
    )
    process.start()
    deadline = time.monotonic() + ready_timeout
    while not http_ok(f"http://127.0.0.1:{health_port}/readyz"):
        if process.exit_code() is not None or time.monotonic() > deadline:
            failure = process.describe_failure()
            process.stop()
            raise ControlPlaneError(f"{name} did not become ready: {failure}")
        time.sleep(0.2)
    return process


def start(
    plane: ControlPlane,
    providers: KubeadmProviders,
    *,
    feature_gates: str = "ClusterTopology=true",
    ready_timeout: float = 120.0,
) -> RunningProviders:
    """Install CABPK's and KCP's CRDs and webhooks on ``plane`` and run both managers (logs in
    the plane's ``logs/``, kept with ``CAPI_REMOTE_KEEP_ENV=1``)."""
    running = RunningProviders()
    try:
        for name, binary, config in (
            ("capi-kubeadm-bootstrap", providers.bootstrap_manager, providers.bootstrap_config),
            (
                "capi-kubeadm-control-plane",
                providers.control_plane_manager,
                providers.control_plane_config,
            ),
        ):
            running.processes.append(
                _start_manager(plane, name, binary, config, feature_gates, ready_timeout)
            )
    except BaseException:
        running.stop()
        raise
    return running


def main() -> int:
    try:
        providers = ensure(log=lambda line: print(line, file=sys.stderr, flush=True))
    except toolchain.ToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for field in attrs.fields(KubeadmProviders):
        print(f"{field.name}: {getattr(providers, field.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
