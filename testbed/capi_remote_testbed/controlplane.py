"""A real, local Kubernetes control plane with Cluster API core: etcd, kube-apiserver,
kube-controller-manager (garbage collector, namespace, job and EndpointSlice controllers) and the
CAPI manager with its webhooks served on loopback.

Everything listens on 127.0.0.1 on free ports, so several environments can run side by side. The
admin identity is a client certificate in ``system:masters``; the kubeconfig embeds it.

For fault-injection tests, kube-apiserver can be stopped (gracefully or by SIGKILL) and started
again on the same port, certificates and etcd, and etcd compacted at its current revision.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import tenacity
import yaml

from capi_remote_testbed import capiconfig
from capi_remote_testbed.kubeconfig import write_kubeconfig
from capi_remote_testbed.net import LOOPBACK, free_port, http_ok
from capi_remote_testbed.pki import CertificateAuthority, service_account_key
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.toolchain import Toolchain

# Settings.in_cluster_pods: Deployments become Pods that run as their ServiceAccount.
_IN_CLUSTER_CONTROLLERS = (
    ",deployment-controller,replicaset-controller,serviceaccount-controller,"
    "root-ca-certificate-publisher-controller,"
    # Providers installed by clusterctl (the kubeadm control plane's) grant their manager an
    # aggregated ClusterRole: without this controller it has no rules.
    "clusterrole-aggregation-controller"
)


class ControlPlaneError(RuntimeError):
    """A component failed to start or become ready; the message carries its log tail."""


@attrs.frozen
class Settings:
    """What to start and how long to wait for it."""

    cluster_api: bool = True
    ready_timeout: float = 120.0
    feature_gates: str = "ClusterTopology=true"
    audit_policy: Path | None = None
    # What Pods of a real Deployment that talk to the API server need (the deploy e2e): the
    # ServiceAccount admission plugin (their token), the Deployment, ReplicaSet, ServiceAccount and
    # root-CA publisher controllers, and Services resolved to their endpoints (see
    # docs/test-bed-hosts.md: the API server reaches webhooks in Pods at their Pod IPs).
    in_cluster_pods: bool = False


@attrs.define
class ControlPlane:
    """Start with :meth:`start` (or as a context manager); :meth:`stop` leaves nothing behind."""

    toolchain: Toolchain
    settings: Settings = Settings()
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="capi-remote-cp-")))
    ca: CertificateAuthority = attrs.field(
        factory=lambda: CertificateAuthority.create("capi-remote-dev")
    )
    apiserver_port: int = attrs.field(factory=free_port)
    webhook_port: int = attrs.field(factory=free_port)
    _processes: list[ManagedProcess] = attrs.field(factory=list, init=False)
    _etcd_url: str = attrs.field(default="", init=False)
    _apiserver_argv: list[str] = attrs.field(factory=list, init=False)
    _apiserver: ManagedProcess | None = attrs.field(default=None, init=False)

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return self._etcd_url

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        try:
            (self.workdir / "pki").mkdir(parents=True, exist_ok=True)
            progress("etcd")
            self._start_etcd()
            progress("kube-apiserver")
            self._start_apiserver()
            progress("kube-controller-manager")
            self._start_controller_manager()
            if self.settings.cluster_api:
                progress("Cluster API core")
                self._start_cluster_api()
        except BaseException:
            self.stop()
            raise

    def stop(self, keep_workdir: bool = False) -> None:
        """Stop every component; the working directory (logs, kubeconfig) goes unless kept."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def processes(self) -> list[ManagedProcess]:
        """The running components (etcd, kube-apiserver, ...), e.g. to measure them."""
        return list(self._processes)

    # -- faults --------------------------------------------------------------------------------

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.exit_code() is None

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop kube-apiserver, leaving etcd and its clients running: gracefully (SIGTERM, as in a
        rolling restart), or with ``kill`` by SIGKILL (a crash: no request is finished)."""
        process = self._apiserver
        if process is None:
            raise ControlPlaneError("kube-apiserver was never started")
        if kill and process.pid is not None and process.exit_code() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.stop()  # SIGTERM and wait (or only reap after the SIGKILL)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again after :meth:`stop_apiserver`: the same port, certificates,
        etcd and kubeconfig, so every client (and the kubeconfig on disk) just reconnects. Returns
        once ``/readyz`` answers 200."""
        old = self._apiserver
        if old is None or not self._apiserver_argv:
            raise ControlPlaneError("kube-apiserver was never started")
        if old.exit_code() is None:
            raise ControlPlaneError("kube-apiserver is still running; stop it first")
        process = ManagedProcess(old.name, self._apiserver_argv, old.log, old.env)
        process.start()
        # Same place in the list: stop() still stops the components in reverse start order.
        self._processes[self._processes.index(old)] = process
        self._apiserver = process
        self._wait_apiserver(process)

    def restart_apiserver(self, *, down_for: float = 0.0, kill: bool = False) -> float:
        """Stop kube-apiserver (see :meth:`stop_apiserver`), keep it down ``down_for`` seconds,
        start it again and wait until it is ready. Returns how long it did not serve, from the
        stop to ready, in seconds."""
        started = time.monotonic()
        self.stop_apiserver(kill=kill)
        if down_for > 0:
            time.sleep(down_for)
        self.start_apiserver()
        return time.monotonic() - started

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision (physically), so that every older
        resourceVersion is gone: a watch resumed from one gets 410 Gone (unless the API server's
        watch cache still holds it). Returns the revision compacted to."""
        key = base64.b64encode(b"compaction-probe").decode()
        revision = int(self._etcd_call("/v3/kv/range", {"key": key})["header"]["revision"])
        try:
            self._etcd_call("/v3/kv/compaction", {"revision": revision, "physical": True})
        except urllib.error.HTTPError as error:
            # Nothing was written since the last compaction (e.g. the API server is down): etcd
            # answers 400 "required revision has been compacted", and the goal already holds.
            if error.code != 400 or b"compacted" not in error.read():
                raise
        return revision

    def _etcd_call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call to etcd's JSON gateway (v3 API over HTTP)."""
        request = urllib.request.Request(  # noqa: S310 - our own loopback etcd
            self._etcd_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
            return result

    # -- clients -------------------------------------------------------------------------------

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        """Run the pinned kubectl against this control plane; raises with its stderr on failure."""
        proc = subprocess.run(
            [str(self.toolchain.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, documents: list[dict[str, Any]]) -> None:
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input_text=yaml.safe_dump_all(documents),
        )

    # -- components ----------------------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log", env)
        process.start()
        self._processes.append(process)
        return process

    def _wait(self, process: ManagedProcess, probe: Callable[[], bool], what: str) -> None:
        """Poll ``probe`` until true; fail early if the process dies, with its log tail."""

        def attempt() -> None:
            if process.exit_code() is not None:
                raise ControlPlaneError(f"{what} did not start: {process.describe_failure()}")
            if not probe():
                raise TimeoutError(what)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.settings.ready_timeout),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            retry=tenacity.retry_if_exception_type(TimeoutError),
            reraise=True,
        )
        try:
            retrying(attempt)
        except TimeoutError:
            raise ControlPlaneError(
                f"{what} not ready after {self.settings.ready_timeout:.0f}s: "
                f"{process.describe_failure()}"
            ) from None

    def _admin_files(self) -> tuple[Path, Path]:
        pki = self.workdir / "pki"
        return pki / "admin.crt", pki / "admin.key"

    def _https_ok(self, url: str, client: tuple[Path, Path] | None = None) -> bool:
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        if client:
            context.load_cert_chain(str(client[0]), str(client[1]))
        return http_ok(url, context=context)

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://{LOOPBACK}:{client_port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        self._etcd_url = client_url
        process = self._spawn(
            "etcd",
            [
                str(self.toolchain.etcd),
                "--name=dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dev={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        self._wait(process, lambda: http_ok(f"{client_url}/health", b'"health":"true"'), "etcd")

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        (pki / "ca.crt").write_bytes(self.ca.cert_pem)
        serving = self.ca.issue(
            "kube-apiserver",
            hosts=(LOOPBACK, "localhost", "10.0.0.1", "kubernetes.default.svc"),
            server=True,
        ).write(pki, "apiserver")
        admin = self.ca.issue("admin", organizations=("system:masters",), client=True)
        admin.write(pki, "admin")
        # How the API server authenticates to a kubelet (logs, exec, port-forward): the test bed's
        # node trusts this CA.
        kubelet_client = self.ca.issue(
            "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
        ).write(pki, "kubelet-client")
        sa_public, sa_private = service_account_key().write(pki, "service-account")
        argv = [
            str(self.toolchain.kube_apiserver),
            f"--etcd-servers={self._etcd_url}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={serving[0]}",
            f"--tls-private-key-file={serving[1]}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={kubelet_client[0]}",
            f"--kubelet-client-key={kubelet_client[1]}",
            "--kubelet-preferred-address-types=InternalIP",  # node names are not in DNS here
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            *(
                ["--enable-aggregator-routing=true"]
                if self.settings.in_cluster_pods
                else ["--disable-admission-plugins=ServiceAccount"]
            ),
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_public}",
            f"--service-account-signing-key-file={sa_private}",
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none",
            # PodTemplates bypass the watch cache, so tests can make a watch hit 410 Gone by
            # compacting etcd (a cached resource would serve the old version from memory).
            "--watch-cache-sizes=podtemplates#0",
        ]
        if self.settings.audit_policy is not None:
            argv += [
                f"--audit-policy-file={self.settings.audit_policy}",
                f"--audit-log-path={self.audit_log}",
            ]
        self._apiserver_argv = argv
        self._apiserver = self._spawn("kube-apiserver", argv)
        self._wait_apiserver(self._apiserver)
        write_kubeconfig(self.kubeconfig, "capi-remote-dev", self.server, self.ca.cert_pem, admin)

    def _wait_apiserver(self, process: ManagedProcess) -> None:
        self._wait(
            process,
            lambda: self._https_ok(f"{self.server}/readyz", self._admin_files()),
            "kube-apiserver",
        )

    def _start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        port = free_port()
        serving = self.ca.issue("kube-controller-manager", hosts=(LOOPBACK,), server=True).write(
            pki, "controller-manager"
        )
        process = self._spawn(
            "kube-controller-manager",
            [
                str(self.toolchain.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                # The job controller runs provisionJob-mode Jobs, the EndpointSlice controller
                # gives Services their endpoints (their Pods need a node:
                # capi_remote_testbed.node).
                "--controllers=garbage-collector-controller,namespace-controller,job-controller,"
                "endpointslice-controller"
                + (_IN_CLUSTER_CONTROLLERS if self.settings.in_cluster_pods else ""),
                "--leader-elect=false",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
            ],
        )
        self._wait(
            process,
            lambda: self._https_ok(f"https://{LOOPBACK}:{port}/healthz"),
            "kube-controller-manager",
        )

    def _start_cluster_api(self) -> None:
        cert_dir = self.workdir / "capi-webhook"
        cert_dir.mkdir()
        serving = self.ca.issue("capi-webhook", hosts=(LOOPBACK, "localhost"), server=True)
        (cert_dir / "tls.crt").write_bytes(serving.cert_pem)
        (cert_dir / "tls.key").touch(mode=0o600)
        (cert_dir / "tls.key").write_bytes(serving.key_pem)
        config, port = self.toolchain.capi_config, self.webhook_port
        self.apply(
            capiconfig.crds(config, self.ca.cert_pem, port, contract_labels=False)
            + capiconfig.webhooks(config, self.ca.cert_pem, port, "capi")
        )
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        health_port = free_port()
        process = self._spawn(
            "capi-manager",
            [
                str(self.toolchain.capi_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--webhook-port={self.webhook_port}",
                f"--webhook-cert-dir={cert_dir}",
                f"--health-addr={LOOPBACK}:{health_port}",
                f"--diagnostics-address={LOOPBACK}:{free_port()}",
                "--insecure-diagnostics",
                f"--feature-gates={self.settings.feature_gates}",
                "--leader-elect=false",
            ],
            env={"POD_NAMESPACE": "capi-system"},
        )

        self._wait(
            process,
            lambda: http_ok(f"http://{LOOPBACK}:{health_port}/readyz"),
            "Cluster API manager",
        )
