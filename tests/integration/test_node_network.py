"""The test bed's node runs plain Pods (no ``hostNetwork``) for real: a Pod from an image made here
gets an IP of the node's subnet that the machine (so the API server) reaches, ``kubectl logs`` and
``kubectl exec`` work, a ClusterIP Service reaches it from another Pod through kube-proxy, and
stopping the node leaves no network namespace, link, route, process or mount behind.

The test starts a node of its own (not the session's ``node`` fixture) so that it can stop it and
look for leftovers; its Pods name it with ``nodeName``."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.node import start_node
from capi_remote_testbed.nodeimages import SSH_CLIENT_IMAGE
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

NODE = "capi-remote-node-net"
NAMESPACE = "node-network"
MARKER = "served-by-the-pod-7c1d"


def _pod(name: str, command: list[str], labels: dict[str, str], restart: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": NODE,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": SSH_CLIENT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                }
            ],
        },
    }


# The image's python3 is Debian's python3-minimal (no http.server): a few lines of socket.
_SERVER = f"""
import socket
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("", 8080))
listener.listen(16)
print("serving on 8080", flush=True)
while True:
    conn, peer = listener.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: {len(MARKER) + 1}\\r\\n\\r\\n{MARKER}\\n")
    conn.close()
    print("served", peer[0], flush=True)
"""


def _leftovers(workdir: Path, netns: str, link: str, sandboxes: list[str]) -> list[str]:
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {n}" for n in (netns, *sandboxes) if n in namespaces.split()]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [f"link {link}" for line in links.splitlines() if f" {link}:" in line]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line}" for line in mounts.splitlines() if str(workdir) in line]
    found += [f"mount {n}" for n in sandboxes if f"/netns/{n} " in mounts]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                found.append(f"process {cmdline.parent.name}")
        except OSError:
            continue
    if workdir.exists():
        found.append(f"dir {workdir}")
    return found


def test_a_plain_pod_gets_an_ip_logs_exec_and_a_service_and_the_node_leaves_nothing(
    control_plane: ControlPlane,
) -> None:
    node = start_node(control_plane, name=NODE)
    kubeconfig = control_plane.kubeconfig

    def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [str(control_plane.toolchain.kubectl), f"--kubeconfig={kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def pod(name: str) -> dict[str, Any]:
        return dict(json.loads(kubectl("get", "pod", "-n", NAMESPACE, name, "-o", "json")))

    assert node.network is not None
    network = node.network
    netns, link, workdir = network.netns, network.host_link, node.workdir
    sandboxes: list[str] = []
    try:
        kubectl("create", "namespace", NAMESPACE)
        server = _pod("server", ["python3", "-c", _SERVER], {"app": "server"}, "Always")
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server", "namespace": NAMESPACE},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([server, service]))
        running = eventually(
            "the server Pod Running with an IP",
            lambda: (
                (p := pod("server"))["status"].get("podIP")
                and p["status"].get("phase") == "Running"
                and p
            ),
        )
        pod_ip = running["status"]["podIP"]
        assert running["spec"].get("hostNetwork") is not True
        assert pod_ip != "127.0.0.1"

        # The machine reaches the Pod's IP (what the API server needs for webhooks to Pods).
        def served() -> bytes:
            try:
                with urllib.request.urlopen(f"http://{pod_ip}:8080/", timeout=2) as response:
                    return bytes(response.read())
            except OSError:
                return b""

        assert MARKER.encode() in eventually("the Pod's IP answering from the machine", served)
        assert "serving on 8080" in eventually(
            "the server's logs", lambda: kubectl("logs", "-n", NAMESPACE, "server")
        )
        exec_out = kubectl("exec", "-n", NAMESPACE, "server", "--", "cat", "/proc/1/cmdline")
        assert "socket" in exec_out

        cluster_ip = kubectl(
            "get", "service", "-n", NAMESPACE, "server", "-o", "jsonpath={.spec.clusterIP}"
        )
        client = _pod(
            "client",
            [
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--retry",
                "20",
                "--retry-all-errors",
                "--retry-delay",
                "1",
                f"http://{cluster_ip}/",
            ],
            {"app": "client"},
            "Never",
        )
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client))
        phase = eventually(
            "the client Pod finished",
            lambda: (
                pod("client")["status"].get("phase") in ("Succeeded", "Failed")
                and pod("client")["status"]["phase"]
            ),
        )
        client_logs = kubectl("logs", "-n", NAMESPACE, "client")
        assert phase == "Succeeded", client_logs
        assert MARKER in client_logs  # through the Service's ClusterIP, kube-proxy's rules
        sandboxes += [Path(path).name for path in node.pod_network_namespaces()]
        assert len(sandboxes) == 2  # the server's and the client's
    finally:
        kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        node.stop()
        kubectl("delete", "node", NODE, "--wait=false", check=False)

    assert _leftovers(workdir, netns, link, sandboxes) == []
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    assert str(network.pod_subnet) not in routes
