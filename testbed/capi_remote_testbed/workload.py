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

import base64
import secrets
import shutil
import socket
import ssl
import tempfile
import time
import urllib.request
from pathlib import Path

import attrs
import yaml

from capi_remote_testbed.controlplane import ControlPlaneError
from capi_remote_testbed.pki import CertificateAuthority, service_account_key
from capi_remote_testbed.processes import ManagedProcess

# The first address of --service-cluster-ip-range (the "kubernetes" Service).
_SERVICE_RANGE, _SERVICE_IP = "10.96.0.0/16", "10.96.0.1"


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
        self.port = self.port or free_port_on(self.host)
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
        self._write_kubeconfig(admin.cert_pem, admin.key_pem)
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
        while not _ready(f"{self.server}/readyz", context):
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

    def _write_kubeconfig(self, cert_pem: bytes, key_pem: bytes) -> None:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "workload",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.ca.cert_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(cert_pem),
                        "client-key-data": b64(key_pem),
                    },
                }
            ],
            "contexts": [{"name": "workload", "context": {"cluster": "workload", "user": "admin"}}],
            "current-context": "workload",
        }
        self.kubeconfig.touch(mode=0o600, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(config))


def _ready(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False
