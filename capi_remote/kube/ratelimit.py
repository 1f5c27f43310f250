"""Rate limiters: how long a failed key waits before its next attempt.

Invariants:
- ``when(key)`` is called once per retry and records it; ``forget(key)`` (after a success)
  returns the key to a clean slate; ``num_requeues(key)`` is the retry count since then.
- Per-item exponential backoff: ``base_delay * 2**failures``, capped at ``max_delay``; one flapping
  key backs off without slowing the others. Default 5 ms doubling up to 1000 s (client-go).
- Token bucket: one bucket for all keys, ``qps`` refill and ``burst`` capacity; it bounds the
  overall retry rate when many keys fail at once (an API outage). Default 10 qps, burst 100.
  It has no per-key state: ``forget`` is a no-op, ``num_requeues`` is 0.
- ``max_of(a, b, …)`` waits for the slowest opinion; every limiter sees every call.
- Settings are immutable ``attrs`` policies; limiters hold only the mutable counters. All
  methods run on the controller's event loop, so nothing here locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import attrs

# 2.0 ** exponent overflows past 1023; long before that the cap applies.
_LARGEST_EXPONENT = 1023


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """Seconds ``item`` should wait before its next attempt; records the attempt."""
        ...

    def forget(self, item: Hashable) -> None:
        """``item`` succeeded: reset its backoff."""
        ...

    def num_requeues(self, item: Hashable) -> int:
        """Attempts recorded for ``item`` since it was last forgotten."""
        ...


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class ExponentialBackoffPolicy:
    """``base_delay * 2**failures`` seconds, never more than ``max_delay``."""

    base_delay: float = attrs.field(default=0.005, validator=_positive)
    max_delay: float = attrs.field(default=1000.0, validator=_positive)


@attrs.frozen
class TokenBucketPolicy:
    """``qps`` tokens per second refill a bucket holding at most ``burst`` tokens."""

    qps: float = attrs.field(default=10.0, validator=_positive)
    burst: int = attrs.field(default=100, validator=_positive)


class ExponentialFailureRateLimiter:
    """Per-item exponential backoff (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, policy: ExponentialBackoffPolicy | None = None) -> None:
        self.policy = policy if policy is not None else ExponentialBackoffPolicy()
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        backoff = self.policy.base_delay * 2.0 ** min(failures, _LARGEST_EXPONENT)
        return min(backoff, self.policy.max_delay)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class TokenBucketRateLimiter:
    """One token bucket shared by all items (client-go's BucketRateLimiter, x/time/rate).

    Each ``when`` reserves a token; once the bucket is empty, reservations queue up ``1/qps``
    apart, which is the delay returned.
    """

    def __init__(
        self, policy: TokenBucketPolicy | None = None, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy if policy is not None else TokenBucketPolicy()
        self._now = now
        self._tokens = float(self.policy.burst)
        self._last = now()

    def when(self, item: Hashable) -> float:
        now = self._now()
        refill = max(0.0, now - self._last) * self.policy.qps
        self._tokens = min(float(self.policy.burst), self._tokens + refill) - 1.0
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.policy.qps

    def forget(self, item: Hashable) -> None:
        """No per-item state to reset."""

    def num_requeues(self, item: Hashable) -> int:
        return 0


class _MaxOf:
    def __init__(self, limiters: tuple[RateLimiter, ...]) -> None:
        self._limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self._limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self._limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self._limiters)


def max_of(*limiters: RateLimiter) -> RateLimiter:
    """A limiter that asks every limiter and waits for the longest answer."""
    if not limiters:
        raise ValueError("max_of needs at least one rate limiter")
    return _MaxOf(limiters)


def default_controller_rate_limiter() -> RateLimiter:
    """controller-runtime's default: per-item 5 ms..1000 s backoff, at most 10 qps overall."""
    return max_of(ExponentialFailureRateLimiter(), TokenBucketRateLimiter())
