"""A workload cluster's API server for e2e flows with a real control-plane provider.

The kubeadm control-plane provider (KCP) talks to the workload cluster at the Cluster's
``controlPlaneEndpoint`` with a kubeconfig it signs with the cluster CA (the ``<cluster>-ca``
Secret, which it uses when it exists), and the kubeadm bootstrap provider creates bootstrap tokens
there for joining nodes. On the test bed no host runs a real kube-apiserver, so the test starts one
on the machine itself: serving and client CA = the cluster CA, listening on the hosts' bridge
address (the one address both the hosts and the management processes reach), with bootstrap-token
authentication, storing into the test bed's etcd under its own prefix.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import tempfile
import time
from pathlib import Path

import attrs

from capi_remote_testbed.controlplane import ControlPlaneError
from capi_remote_testbed.kubeconfig import write_kubeconfig
from capi_remote_testbed.net import free_port, http_ok
from capi_remote_testbed.pki import CertificateAuthority, service_account_key
from capi_remote_testbed.processes import ManagedProcess

# The first address of --service-cluster-ip-range (the "kubernetes" Service).
_SERVICE_RANGE, _SERVICE_IP = "10.96.0.0/16", "10.96.0.1"


@attrs.define
class WorkloadApiServer:
    """``start()`` / ``stop()``; ``endpoint`` is ``(host, port)`` for controlPlaneEndpoint."""

    kube_apiserver: Path
    etcd_url: str
    ca: CertificateAuthority
    host: str
    workdir: Path = attrs.field(
        factory=lambda: Path(tempfile.mkdtemp(prefix="capi-remote-workload-"))
    )
    port: int = 0
    ready_timeout: float = 60.0
    _process: ManagedProcess | None = attrs.field(default=None, init=False)

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (client certificate in system:masters, signed by the CA)."""
        return self.workdir / "kubeconfig"

    @property
    def log(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    def start(self) -> None:
        self.port = self.port or free_port(self.host)
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (pki / "ca.crt").write_bytes(self.ca.cert_pem)
        serving_cert, serving_key = self.ca.issue(
            "kube-apiserver",
            hosts=(
                self.host, "127.0.0.1", "localhost", _SERVICE_IP, "kubernetes",
                "kubernetes.default", "kubernetes.default.svc",
            ),
            server=True,
        ).write(pki, "apiserver")  # fmt: skip
        admin = self.ca.issue("kubernetes-admin", organizations=("system:masters",), client=True)
        admin_cert, admin_key = admin.write(pki, "admin")
        sa_public, sa_private = service_account_key().write(pki, "sa")
        write_kubeconfig(self.kubeconfig, "workload", self.server, self.ca.cert_pem, admin)
        self._process = ManagedProcess(
            "workload-kube-apiserver",
            [
                str(self.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--etcd-prefix=/workload-{secrets.token_hex(6)}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={_SERVICE_RANGE}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                "--enable-bootstrap-token-auth=true",
                "--disable-admission-plugins=ServiceAccount",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_public}",
                f"--service-account-signing-key-file={sa_private}",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
            ],
            self.log,
        )
        self._process.start()
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(admin_cert), str(admin_key))
        deadline = time.monotonic() + self.ready_timeout
        while not http_ok(f"{self.server}/readyz", context=context):
            if self._process.exit_code() is not None or time.monotonic() > deadline:
                failure = self._process.describe_failure()
                self.stop()
                raise ControlPlaneError(f"workload kube-apiserver not ready: {failure}")
            time.sleep(0.2)

    def stop(self, keep_workdir: bool = False) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
