"""The controller framework core: workqueue, rate limiters, controller loop (client-go style).

It knows nothing of RemoteMachines (an import-linter contract keeps it that way). Everything runs
on one asyncio event loop; see docs/architecture-core.md for the semantics and invariants.
"""

from capi_remote.kube.builder import ControllerBuilder
from capi_remote.kube.controller import Controller
from capi_remote.kube.delaying import Clock, DelayingQueue, LoopClock
from capi_remote.kube.metrics import Metrics
from capi_remote.kube.queue import Queue, ShutDown
from capi_remote.kube.ratelimit import (
    ExponentialBackoffPolicy,
    ExponentialFailureRateLimiter,
    RateLimiter,
    TokenBucketPolicy,
    TokenBucketRateLimiter,
    default_controller_rate_limiter,
    max_of,
)
from capi_remote.kube.ratelimited import RateLimitingQueue
from capi_remote.kube.reconcile import (
    ReconcileContext,
    Reconciler,
    Request,
    Result,
    TerminalError,
)

__all__ = [
    "Clock",
    "Controller",
    "ControllerBuilder",
    "DelayingQueue",
    "ExponentialBackoffPolicy",
    "ExponentialFailureRateLimiter",
    "LoopClock",
    "Metrics",
    "Queue",
    "RateLimiter",
    "RateLimitingQueue",
    "ReconcileContext",
    "Reconciler",
    "Request",
    "Result",
    "ShutDown",
    "TerminalError",
    "TokenBucketPolicy",
    "TokenBucketRateLimiter",
    "default_controller_rate_limiter",
    "max_of",
]
