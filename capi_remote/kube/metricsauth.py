"""Who may scrape ``/metrics``: bearer tokens checked with a TokenReview, then the user's right to
``get`` the non-resource URL with a SubjectAccessReview, as controller-runtime's
``WithAuthenticationAndAuthorization`` filter does.

Invariants:
- No token (or not a ``Bearer`` one) is 401; a token the API server does not authenticate is 401;
  an authenticated user without the right is 403; a review that could not be made is 500 and is
  not cached. The manager sends only GET (and HEAD) of ``/metrics`` here; other methods are 405.
- Both decisions are cached for ``ttl`` seconds in bounded LRU maps (``max_entries`` each), so a
  scraper costs at most two reviews per ``ttl``, and a flood of distinct tokens costs bounded
  memory. Tokens are cached under their SHA-256, never as given; they are never logged.
- A request is small or refused: request line and headers are size-limited by the server
  (see ``SERVER_LIMITS``), a token longer than ``MAX_TOKEN_BYTES`` is 401 without a review, and
  no body is read.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import attrs
import structlog

from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError

_log = structlog.get_logger("capi_remote.metricsauth")

MAX_TOKEN_BYTES = 16 * 1024
#: aiohttp request parser limits for the metrics server (bytes of the request line, of a header).
SERVER_LIMITS = {"max_line_size": 4096, "max_field_size": MAX_TOKEN_BYTES + 64}
TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False)
SUBJECT_ACCESS_REVIEWS = Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False
)


@attrs.frozen
class User:
    """An authenticated identity, as a TokenReview reports it."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class ReviewError(Exception):
    """The review could not be made (API server unreachable or refusing the review itself)."""


class Reviewer(Protocol):
    async def authenticate(self, token: str) -> User | None:
        """The token's user, or None when the API server does not authenticate it."""

    async def allowed(self, user: User, verb: str, path: str) -> bool:
        """Whether ``user`` may ``verb`` the non-resource URL ``path``."""


class KubeReviewer:
    """Reviews through the API server (TokenReview and SubjectAccessReview create rights)."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def authenticate(self, token: str) -> User | None:
        review: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        status = (await self._create(TOKEN_REVIEWS, review)).get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return User(
            name=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(v) for v in vs)) for k, vs in extra.items())),
        )

    async def allowed(self, user: User, verb: str, path: str) -> bool:
        spec: dict[str, Any] = {
            "user": user.name,
            "uid": user.uid,
            "groups": list(user.groups),
            "extra": {key: list(values) for key, values in user.extra},
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        status = (await self._create(SUBJECT_ACCESS_REVIEWS, review)).get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied")

    async def _create(self, resource: Resource, review: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._client.create(resource, review)
        except (ApiError, TransportError) as error:
            raise ReviewError(f"{resource.kind} failed: {error}") from None


class _Expiring:
    """A bounded LRU map whose entries expire ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float, max_entries: int, now: Callable[[], float]) -> None:
        self._ttl, self._max, self._now = ttl, max_entries, now
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()

    def get(self, key: Hashable) -> tuple[bool, object]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._now():
            self._entries.pop(key, None)
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: Hashable, value: object) -> None:
        self._entries[key] = (self._now() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


#: The body of each refusal.
REFUSALS = {401: "Unauthorized", 403: "Forbidden", 500: "Authorization error"}


class MetricsAuth:
    """Decides a request's status: 200, or one of ``REFUSALS`` (the server answers those)."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        ttl: float = 10.0,
        max_entries: int = 1024,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviewer = reviewer
        self.users = _Expiring(ttl, max_entries, now)
        self.decisions = _Expiring(ttl, max_entries, now)

    async def status(self, authorization: str | None, verb: str, path: str) -> int:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_BYTES:
            return 401
        try:
            user = await self._user(token)
            if user is None:
                return 401
            return 200 if await self._allowed(user, verb, path) else 403
        except ReviewError as error:
            _log.warning("metrics authorization failed", error=str(error))
            return 500

    async def _user(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).digest()
        found, user = self.users.get(key)
        if not found:
            user = await self._reviewer.authenticate(token)
            self.users.put(key, user)
        assert user is None or isinstance(user, User)
        return user

    async def _allowed(self, user: User, verb: str, path: str) -> bool:
        key = (user, verb, path)
        found, allowed = self.decisions.get(key)
        if not found:
            allowed = await self._reviewer.allowed(user, verb, path)
            self.decisions.put(key, allowed)
        return bool(allowed)
