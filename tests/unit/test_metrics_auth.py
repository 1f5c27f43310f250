"""The /metrics guard: 401 without a valid token, 403 without the right, 200 with it; decisions
cached briefly in bounded maps; oversized requests refused before any review."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.kube.manager import Manager, ManagerSettings
from capi_remote.kube.metricsauth import MAX_TOKEN_BYTES, MetricsAuth, ReviewError, User
from capi_remote_testbed.pki import CertificateAuthority

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target

READER = User("system:serviceaccount:monitoring:prometheus", groups=("system:authenticated",))
STRANGER = User("system:serviceaccount:tenant:app", groups=("system:authenticated",))


class FakeReviewer:
    """Tokens map to users; ``granted`` users may get ``/metrics``; every review is counted."""

    def __init__(self) -> None:
        self.tokens = {"reader-token": READER, "stranger-token": STRANGER}
        self.granted = {READER}
        self.authentications = 0
        self.authorizations: list[tuple[User, str, str]] = []
        self.broken = False

    async def authenticate(self, token: str) -> User | None:
        if self.broken:
            raise ReviewError("API server unreachable")
        self.authentications += 1
        return self.tokens.get(token)

    async def allowed(self, user: User, verb: str, path: str) -> bool:
        self.authorizations.append((user, verb, path))
        return user in self.granted and (verb, path) == ("get", "/metrics")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_statuses_by_token_and_right() -> None:
    auth = MetricsAuth(FakeReviewer())
    assert await auth.status(None, "get", "/metrics") == 401
    assert await auth.status("Basic dXNlcjpwYXNz", "get", "/metrics") == 401
    assert await auth.status("Bearer ", "get", "/metrics") == 401
    assert await auth.status("Bearer unknown-token", "get", "/metrics") == 401
    assert await auth.status("Bearer stranger-token", "get", "/metrics") == 403
    assert await auth.status("Bearer reader-token", "get", "/metrics") == 200
    assert await auth.status("bearer reader-token", "get", "/metrics") == 200


async def test_oversized_token_is_refused_without_a_review() -> None:
    reviewer = FakeReviewer()
    auth = MetricsAuth(reviewer)
    assert await auth.status("Bearer " + "a" * (MAX_TOKEN_BYTES + 1), "get", "/metrics") == 401
    assert reviewer.authentications == 0


async def test_decisions_are_cached_until_they_expire() -> None:
    reviewer, clock = FakeReviewer(), Clock()
    auth = MetricsAuth(reviewer, ttl=10.0, now=clock)
    for _ in range(5):
        assert await auth.status("Bearer reader-token", "get", "/metrics") == 200
    assert (reviewer.authentications, len(reviewer.authorizations)) == (1, 1)
    # A revoked right is noticed once the cached decision expires.
    reviewer.granted.clear()
    clock.now += 10.5
    assert await auth.status("Bearer reader-token", "get", "/metrics") == 403
    assert (reviewer.authentications, len(reviewer.authorizations)) == (2, 2)


async def test_caches_are_bounded() -> None:
    reviewer = FakeReviewer()
    auth = MetricsAuth(reviewer, max_entries=16)
    for n in range(200):
        assert await auth.status(f"Bearer guess-{n}", "get", "/metrics") == 401
    assert len(auth.users) == 16
    assert reviewer.authentications == 200


async def test_a_failed_review_is_500_and_not_cached() -> None:
    reviewer = FakeReviewer()
    auth = MetricsAuth(reviewer)
    reviewer.broken = True
    assert await auth.status("Bearer reader-token", "get", "/metrics") == 500
    reviewer.broken = False
    assert await auth.status("Bearer reader-token", "get", "/metrics") == 200


# -- the manager's server --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(reviewer: FakeReviewer, cert_dir: Path | None = None) -> AsyncIterator[str]:
    client = KubeClient(object())  # type: ignore[arg-type]  # never asked: the reviewer is fake
    settings = ManagerSettings(
        health_address=None, metrics_address="127.0.0.1:0", metrics_cert_dir=cert_dir
    )
    manager = Manager(client, settings, metrics_reviewer=reviewer)
    manager.metrics.for_queue("widgets").added("x")
    async with manager._servers():
        host, port = manager.bound["metrics"]
        yield f"https://{host}:{port}/metrics"


def scrape(
    url: str, token: str | None = None, ca: bytes | None = None
) -> tuple[int, str, dict[str, str]]:
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed: the test checks auth, not the chain
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


async def test_https_server_answers_401_403_200() -> None:
    async with serving(FakeReviewer()) as url:
        status, _, headers = await asyncio.to_thread(scrape, url)
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
        assert (await asyncio.to_thread(scrape, url, "stranger-token"))[0] == 403
        status, body, _ = await asyncio.to_thread(scrape, url, "reader-token")
        assert status == 200 and 'workqueue_adds_total{name="widgets"} 1.0' in body


async def test_plain_http_is_refused_by_the_tls_server() -> None:
    async with serving(FakeReviewer()) as url:
        plain = url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(urllib.request.urlopen, plain, timeout=10)


async def test_oversized_header_is_refused_before_review() -> None:
    reviewer = FakeReviewer()
    async with serving(reviewer) as url:
        status, _, _ = await asyncio.to_thread(scrape, url, "x" * (MAX_TOKEN_BYTES * 2))
        assert status in (400, 431)
        assert reviewer.authentications == 0


async def test_the_servers_own_limits_apply() -> None:
    """Ours, not aiohttp's defaults (8190 bytes each): a request line over 4 KiB is refused, and
    a token up to MAX_TOKEN_BYTES reaches the review."""
    reviewer = FakeReviewer()
    async with serving(reviewer) as url:
        status, _, _ = await asyncio.to_thread(scrape, url + "?" + "a" * 5000, "reader-token")
        assert status in (400, 414)
        assert reviewer.authentications == 0
        status, _, _ = await asyncio.to_thread(scrape, url, "t" * (MAX_TOKEN_BYTES - 16))
        assert status == 401 and reviewer.authentications == 1  # reviewed, and unknown


async def test_certificate_files_are_served_when_given(tmp_path: Path) -> None:
    """--metrics-cert-dir: the server presents that certificate (a client trusting only its CA
    connects), and the checks still apply."""
    ca = CertificateAuthority.create("metrics-ca")
    ca.issue("metrics", hosts=("127.0.0.1",), server=True).write(tmp_path, "tls")
    async with serving(FakeReviewer(), tmp_path) as url:
        assert (await asyncio.to_thread(scrape, url, None, ca.cert_pem))[0] == 401
        assert (await asyncio.to_thread(scrape, url, "reader-token", ca.cert_pem))[0] == 200
        other = CertificateAuthority.create("other-ca")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(scrape, url, "reader-token", other.cert_pem)
