"""The rate-limited queue: retries go through a rate limiter before re-entering the queue.

Invariants:
- ``add_rate_limited(key)`` is ``add_after(key, limiter.when(key))``: every invariant of the
  delaying queue holds, in particular a pending short retry is never postponed.
- The limiter's memory of a key lasts until ``forget(key)``; the controller forgets after every
  success, so backoff grows only across consecutive failures.
- Retries are counted in ``workqueue_retries_total``.
"""

from __future__ import annotations

from capi_remote.kube.delaying import Clock, DelayingQueue
from capi_remote.kube.metrics import Metrics
from capi_remote.kube.queue import T
from capi_remote.kube.ratelimit import RateLimiter, default_controller_rate_limiter


class RateLimitingQueue(DelayingQueue[T]):
    """A delaying queue with per-key retry backoff (controller-runtime's default when omitted)."""

    def __init__(
        self,
        name: str,
        *,
        rate_limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, metrics=metrics, clock=clock)
        self.rate_limiter = (
            rate_limiter if rate_limiter is not None else default_controller_rate_limiter()
        )

    def add_rate_limited(self, item: T) -> None:
        """Retry ``item`` once the rate limiter allows it."""
        self._metrics.retried()
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: T) -> None:
        """``item`` succeeded: the next failure starts from the smallest backoff again."""
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)
