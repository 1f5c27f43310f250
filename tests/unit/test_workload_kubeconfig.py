"""Attacks through a tenant-written ``<cluster>-kubeconfig`` Secret (issue 13, point 1).

Each attack runs the reconciler's real path (``WorkloadClients.get``, the Node watch of
``WorkloadNodes``, then ``set_provider_id``) against
a real HTTPS listener on loopback standing in for the tenant's server, and asserts that nothing
reaches it (no service-account token, no request at all) and that no command ran. The accepted
forms (inline token, inline client certificate) reach the same listener, which proves it listens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from capi_remote import KubeClient, Request, TransportError
from capi_remote.kube.client import UNTRUSTED_MAX_BODY_BYTES
from capi_remote.kube.kubeconfig import (
    MAX_KUBECONFIG_BYTES,
    KubeconfigError,
    WorkloadKubeconfig,
    api_client,
    parse_kubeconfig,
)
from capi_remote.resources import NODES
from capi_remote_testbed.pki import CertificateAuthority, KeyPair
from reconcilers.workload import InvalidWorkloadKubeconfig, WorkloadClients, set_provider_id
from reconcilers.workloadnodes import NodeWatchSettings, WorkloadNodes

JSONDict = dict[str, Any]
STOLEN = "controller-service-account-token"


class Listener:
    """An HTTPS API server on loopback that records every request's credentials."""

    def __init__(self, ca: CertificateAuthority, serving: KeyPair, directory: Path) -> None:
        self.requests: list[tuple[str, str | None, str | None]] = []
        cert, key = serving.write(directory, "serving")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(cadata=ca.cert_pem.decode())
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.url = ""
        #: A hostile server's answer to every request instead of the one Node, when set.
        self.hostile: bytes | None = None

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
        self.requests.append((request.path, request.headers.get("Authorization"), subject))
        if self.hostile is not None:
            return web.Response(body=self.hostile, content_type="application/json")
        node = {"kind": "Node", "metadata": {"name": "n", "resourceVersion": "1"}, "spec": {}}
        if request.path != "/api/v1/nodes":
            return web.json_response(node)
        if request.query.get("watch") == "true":
            await asyncio.sleep(0.5)  # nothing changed: the watch ends, and is opened again
            return web.Response(body=b"")
        return web.json_response(
            {"kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": [node]}
        )


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[Listener, CertificateAuthority]]:
    ca = CertificateAuthority.create("tenant-ca")
    server = Listener(ca, ca.issue("api", hosts=("127.0.0.1",), server=True), tmp_path)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server.context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"https://127.0.0.1:{port}"
    yield server, ca
    await runner.cleanup()


class Secrets:
    """The one Secret ``WorkloadClients`` reads, as the informer cache would hold it."""

    def __init__(self, kubeconfig: JSONDict | bytes, version: str = "1") -> None:
        raw = kubeconfig if isinstance(kubeconfig, bytes) else yaml.safe_dump(kubeconfig).encode()
        self.secret = {
            "metadata": {"name": "c-kubeconfig", "resourceVersion": version},
            "data": {"value": base64.b64encode(raw).decode()},
        }

    def get(self, namespace: str, name: str) -> JSONDict | None:
        return self.secret if name == "c-kubeconfig" else None


def kubeconfig(server: str, cluster: JSONDict, user: JSONDict) -> JSONDict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def reconcile(config: JSONDict | bytes) -> str:
    """What the RemoteMachine reconciler does with the Secret: get a client, find the Node in
    the cluster's Node watch, link it."""
    clients = WorkloadClients(Secrets(config))  # type: ignore[arg-type]
    nodes = WorkloadNodes(lambda _: None)
    try:
        client = await clients.get("tenant", "c")
        assert client is not None
        async with asyncio.timeout(10):
            while True:
                found = nodes.lookup(("tenant", "c"), client, Request("tenant", "m"), ["n"], set())
                if found.node is not None:
                    return await set_provider_id(client, found.node, "remote://x")
                await asyncio.sleep(0.05)
    except InvalidWorkloadKubeconfig as error:
        return f"refused: {error}"
    finally:
        await nodes.close()
        await clients.close()


async def test_inline_token_and_ca_reach_the_server(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    server, ca = listener
    config = kubeconfig(
        server.url, {"certificate-authority-data": b64(ca.cert_pem)}, {"token": "tenant-token"}
    )
    assert await reconcile(config) == "linked"
    assert ("/api/v1/nodes/n", "Bearer tenant-token", None) in server.requests


async def test_inline_client_certificate_needs_no_temporary_file(
    listener: tuple[Listener, CertificateAuthority],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, ca = listener
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    pair = ca.issue("tenant-admin", client=True)
    user = {"client-certificate-data": b64(pair.cert_pem), "client-key-data": b64(pair.key_pem)}
    config = kubeconfig(server.url, {"certificate-authority-data": b64(ca.cert_pem)}, user)
    assert await reconcile(config) == "linked"
    assert ("/api/v1/nodes/n", None, "tenant-admin") in server.requests
    assert list(temp.iterdir()) == []  # no key material on disk


async def test_token_file_cannot_send_the_controller_token(
    listener: tuple[Listener, CertificateAuthority], tmp_path: Path
) -> None:
    server, ca = listener
    token = tmp_path / "token"  # stands for /var/run/secrets/kubernetes.io/serviceaccount/token
    token.write_text(STOLEN)
    config = kubeconfig(
        server.url, {"certificate-authority-data": b64(ca.cert_pem)}, {"tokenFile": str(token)}
    )
    outcome = await reconcile(config)
    assert outcome.startswith("refused:") and "'tokenFile' is not accepted" in outcome
    assert server.requests == []
    assert STOLEN not in outcome


async def test_exec_plugin_never_runs(
    listener: tuple[Listener, CertificateAuthority], tmp_path: Path
) -> None:
    server, ca = listener
    marker = tmp_path / "pwned"
    exec_plugin = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "sh",
        "args": ["-c", f'touch {marker}; echo \'{{"status": {{"token": "x"}}}}\''],
        "interactiveMode": "Never",
    }
    config = kubeconfig(
        server.url, {"certificate-authority-data": b64(ca.cert_pem)}, {"exec": exec_plugin}
    )
    outcome = await reconcile(config)
    await asyncio.sleep(0.2)  # a started plugin would have touched the marker by now
    assert "'exec' is not accepted" in outcome
    assert not marker.exists()
    assert server.requests == []


@pytest.mark.parametrize(
    ("cluster", "user", "refused"),
    [
        ({}, {"auth-provider": {"name": "oidc", "config": {"id-token": "a.b.c"}}}, "auth-provider"),
        (
            {"certificate-authority": "/etc/ssl/certs/ca-certificates.crt"},
            {},
            "certificate-authority",
        ),
        ({}, {"client-certificate": "/etc/x.crt", "client-key-data": "eA=="}, "client-certificate"),
        ({}, {"client-key": "/etc/x.key"}, "client-key"),
        ({"insecure-skip-tls-verify": True}, {}, "insecure-skip-tls-verify"),
        ({"tls-server-name": "kubernetes"}, {}, "tls-server-name"),
        ({}, {"username": "admin"}, "username"),
        ({}, {"as": "system:admin"}, "as"),
        ({"extensions": []}, {}, "extensions"),
    ],
)
async def test_file_paths_and_unknown_keys_are_refused_before_any_request(
    listener: tuple[Listener, CertificateAuthority],
    cluster: JSONDict,
    user: JSONDict,
    refused: str,
) -> None:
    server, _ = listener
    config = kubeconfig(server.url, cluster, {"token": "t", **user})
    outcome = await reconcile(config)
    assert f"{refused!r} is not accepted" in outcome
    assert server.requests == []


async def test_proxy_url_is_refused_and_never_dialled(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    server, ca = listener
    dialled: list[bool] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.append(True)
        writer.close()

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = proxy_server.sockets[0].getsockname()[1]
    cluster = {
        "certificate-authority-data": b64(ca.cert_pem),
        "proxy-url": f"http://127.0.0.1:{port}",
    }
    try:
        outcome = await reconcile(kubeconfig(server.url, cluster, {"token": "t"}))
    finally:
        proxy_server.close()
        await proxy_server.wait_closed()
    assert "'proxy-url' is not accepted" in outcome
    assert dialled == [] and server.requests == []


def test_unused_entries_are_checked_too() -> None:
    config = kubeconfig("https://127.0.0.1:1", {}, {"token": "t"})
    config["users"].append({"name": "other", "user": {"exec": {"command": "sh"}}})
    with pytest.raises(KubeconfigError, match="'exec' is not accepted"):
        parse_kubeconfig(yaml.safe_dump(config).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a: &a [1]\nb: *a\n", "aliases"),
        (b"x" * (MAX_KUBECONFIG_BYTES + 1), "larger than"),
        (b"kind: Config\nexec: {}\n", "'exec' is not accepted"),
        (yaml.safe_dump(kubeconfig("http://127.0.0.1:1", {}, {})).encode(), "https URL"),
        (yaml.safe_dump(kubeconfig("https://u:p@h", {}, {})).encode(), "without userinfo"),
        (
            yaml.safe_dump(
                kubeconfig("https://h", {"certificate-authority-data": "eA=="}, {})
            ).encode(),
            "base64-encoded PEM",
        ),
        (yaml.safe_dump(kubeconfig("https://h", {}, {"token": "a\nb"})).encode(), "printable"),
        (b"clusters: []\n", "current-context"),
        (b"[1, 2]", "must be a mapping"),
    ],
)
def test_malformed_kubeconfigs_say_why(data: bytes, message: str) -> None:
    with pytest.raises(KubeconfigError, match=message):
        parse_kubeconfig(data)


async def test_a_refused_kubeconfig_is_reported_until_the_secret_changes(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    server, ca = listener
    secrets = Secrets(kubeconfig(server.url, {}, {"tokenFile": "/t"}))
    clients = WorkloadClients(secrets)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(InvalidWorkloadKubeconfig, match="tenant/c-kubeconfig"):
            await clients.get("tenant", "c")
    good = kubeconfig(server.url, {"certificate-authority-data": b64(ca.cert_pem)}, {"token": "t"})
    clients._secrets = Secrets(good, version="2")  # type: ignore[assignment]
    assert await clients.get("tenant", "c") is not None
    await clients.close()


def test_unusable_certificate_data_is_a_kubeconfig_error() -> None:
    garbage = b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    with pytest.raises(KubeconfigError, match="not usable"):
        api_client(WorkloadKubeconfig(server="https://h", certificate_authority=garbage))


def client_of(server: Listener, ca: CertificateAuthority) -> KubeClient:
    config = kubeconfig(
        server.url, {"certificate-authority-data": b64(ca.cert_pem)}, {"token": "t"}
    )
    return KubeClient.from_untrusted_kubeconfig(yaml.safe_dump(config).encode())


async def test_an_answer_over_the_budget_is_not_read_to_its_end(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    """A tenant's server answers a Node request with more than the client's budget."""
    server, ca = listener
    server.hostile = b'{"kind": "NodeList", "items": [' + b'{"a": 1},' * UNTRUSTED_MAX_BODY_BYTES
    client = client_of(server, ca)
    try:
        with pytest.raises(TransportError, match="larger than"):
            await client.list(NODES)
        with pytest.raises(TransportError, match="larger than"):
            async for _ in client.watch(NODES, None, "1"):
                pass
    finally:
        await client.close()


async def test_json_nested_past_the_parser_is_a_value_error(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    server, ca = listener
    server.hostile = b"[" * 200_000
    client = client_of(server, ca)
    try:
        with pytest.raises(ValueError, match="nested too deeply"):
            await client.get(NODES, None, "n")
    finally:
        await client.close()


async def test_more_nodes_than_the_budget_stop_the_watch_with_a_reason(
    listener: tuple[Listener, CertificateAuthority],
) -> None:
    """A tenant's server lists more Nodes than the controller keeps: the watch stops, the waiting
    machine is woken to report why, and nothing more is asked until the retry time."""
    server, ca = listener
    items = [{"metadata": {"name": f"n{i}", "resourceVersion": "1"}} for i in range(5)]
    server.hostile = json.dumps(
        {"kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": items}
    ).encode()
    client = client_of(server, ca)
    woken: list[Request] = []
    nodes = WorkloadNodes(woken.append, NodeWatchSettings(max_nodes=3))
    machine = Request("tenant", "m")
    try:
        assert not nodes.lookup(("tenant", "c"), client, machine, ["n1"], set()).synced
        async with asyncio.timeout(10):
            while not woken:
                await asyncio.sleep(0.02)
        found = nodes.lookup(("tenant", "c"), client, machine, ["n1"], set())
        assert found.failure is not None and "more than 3 nodes" in found.failure
        asked = len(server.requests)
        await asyncio.sleep(0.2)
        assert nodes.lookup(("tenant", "c"), client, machine, ["n1"], set()).failure
        assert len(server.requests) == asked
    finally:
        await nodes.close()
        await client.close()
