"""The cluster the e2e suite runs against when ``CAPI_REMOTE_E2E_KUBECONFIG`` names one (a kind
cluster with Cluster API and our controller deployed from kustomize, say) instead of the local
control plane. It offers what a :class:`~capi_remote_testbed.controlplane.ControlPlane` offers the
test bed: a kubeconfig, kubectl, the API server's address, and client credentials (``pki/``) the
hosts' node-registration scripts use to reach the API server.

Prerequisites are in docs/development.md ("Running the e2e suite against another cluster").
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import yaml

KUBECONFIG_ENV = "CAPI_REMOTE_E2E_KUBECONFIG"
#: The API server address written into the ``<cluster>-kubeconfig`` Secrets, as Cluster API and
#: our controller reach it from where they run (in a kind cluster: https://kubernetes.default.svc).
WORKLOAD_SERVER_ENV = "CAPI_REMOTE_E2E_WORKLOAD_SERVER"


class ExternalClusterError(Exception):
    """The kubeconfig cannot drive the e2e suite; the message says what is missing."""


def external_kubeconfig() -> Path | None:
    value = os.environ.get(KUBECONFIG_ENV, "").strip()
    return Path(value).expanduser() if value else None


@attrs.define
class ExternalCluster:
    kubeconfig: Path
    kubectl_binary: Path
    apiserver_host: str
    apiserver_port: int
    workdir: Path
    workload_server: str | None = None

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: Path, kubectl_binary: Path, workload_server: str | None = None
    ) -> ExternalCluster:
        """Read the current context's server and client certificate (token auth cannot be
        handed to the hosts' registration scripts, which use client certificates)."""
        if not kubeconfig.is_file():
            raise ExternalClusterError(f"{KUBECONFIG_ENV}={kubeconfig}: no such file")
        config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text()) or {}
        context = _named(config, "contexts", config.get("current-context"))
        cluster = _named(config, "clusters", context.get("cluster"))
        user = _named(config, "users", context.get("user"))
        server = urllib.parse.urlsplit(str(cluster.get("server", "")))
        if server.scheme != "https" or not server.hostname:
            raise ExternalClusterError(f"{kubeconfig}: the cluster's server must be an https URL")
        workdir = Path(tempfile.mkdtemp(prefix="capi-remote-e2e-external-"))
        pki = workdir / "pki"
        pki.mkdir()
        for name, field in (
            ("ca.crt", "certificate-authority-data"),
            ("admin.crt", "client-certificate-data"),
            ("admin.key", "client-key-data"),
        ):
            holder = cluster if field.startswith("certificate-authority") else user
            data = holder.get(field)
            if not data:
                raise ExternalClusterError(
                    f"{kubeconfig}: {field} is missing (the suite needs embedded certificate data"
                    " and a client certificate user, as kind writes them)"
                )
            (pki / name).write_bytes(base64.b64decode(data))
        (pki / "admin.key").chmod(0o600)
        return cls(
            kubeconfig=kubeconfig,
            kubectl_binary=kubectl_binary,
            apiserver_host=server.hostname,
            apiserver_port=server.port or 443,
            workdir=workdir,
            workload_server=workload_server,
        )

    @property
    def server(self) -> str:
        return f"https://{self.apiserver_host}:{self.apiserver_port}"

    def workload_kubeconfig(self) -> bytes:
        """The kubeconfig for ``<cluster>-kubeconfig`` Secrets: this cluster stands in for the
        workload clusters, at the address Cluster API reaches it from where it runs."""
        if not self.workload_server:
            return self.kubeconfig.read_bytes()
        config = yaml.safe_load(self.kubeconfig.read_text())
        for entry in config.get("clusters", []):
            entry["cluster"]["server"] = self.workload_server
        return yaml.safe_dump(config).encode()

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        proc = subprocess.run(
            [str(self.kubectl_binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ExternalClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _named(config: dict[str, Any], section: str, name: object) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return dict(entry.get(section[:-1]) or {})
    raise ExternalClusterError(f"kubeconfig: no {section[:-1]} named {name!r}")
