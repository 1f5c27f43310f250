"""Rate limiters: exponential per-key backoff, the global token bucket, max_of."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from capi_remote.kube import (
    ExponentialBackoffPolicy,
    ExponentialFailureRateLimiter,
    TokenBucketPolicy,
    TokenBucketRateLimiter,
    default_controller_rate_limiter,
    max_of,
)

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target


class FrozenTime:
    def __init__(self) -> None:
        self.time = 1000.0

    def __call__(self) -> float:
        return self.time


# --- exponential -------------------------------------------------------------------------------


def test_exponential_defaults_match_client_go() -> None:
    limiter = ExponentialFailureRateLimiter()
    assert [limiter.when("a") for _ in range(4)] == [0.005, 0.01, 0.02, 0.04]
    assert limiter.policy == ExponentialBackoffPolicy(base_delay=0.005, max_delay=1000.0)


def test_exponential_is_capped_and_never_overflows() -> None:
    limiter = ExponentialFailureRateLimiter()
    delays = [limiter.when("a") for _ in range(2000)]
    assert max(delays) == 1000.0
    assert delays[-1] == 1000.0
    assert limiter.num_requeues("a") == 2000


def test_exponential_backoff_is_per_key() -> None:
    limiter = ExponentialFailureRateLimiter(ExponentialBackoffPolicy(base_delay=1, max_delay=100))
    limiter.when("a")
    limiter.when("a")
    assert limiter.when("b") == 1
    assert limiter.num_requeues("a") == 2
    assert limiter.num_requeues("b") == 1


@given(
    base=st.floats(1e-4, 10),
    cap=st.floats(1e-3, 2000),
    failures=st.integers(0, 80),
)
def test_exponential_sequence_doubles_until_the_cap(base: float, cap: float, failures: int) -> None:
    limiter = ExponentialFailureRateLimiter(
        ExponentialBackoffPolicy(base_delay=base, max_delay=cap)
    )
    delays = [limiter.when("k") for _ in range(failures)]
    assert delays == [min(base * 2.0**n, cap) for n in range(failures)]
    assert limiter.num_requeues("k") == failures


class ExponentialMachine(RuleBasedStateMachine):
    """Interleaved failures and forgets: each key's delay depends only on its own streak."""

    def __init__(self) -> None:
        super().__init__()
        self.limiter = ExponentialFailureRateLimiter(
            ExponentialBackoffPolicy(base_delay=0.5, max_delay=16)
        )
        self.streak: dict[str, int] = {}

    @rule(key=st.sampled_from("abc"))
    def fail(self, key: str) -> None:
        streak = self.streak.get(key, 0)
        assert self.limiter.when(key) == min(0.5 * 2**streak, 16)
        self.streak[key] = streak + 1

    @rule(key=st.sampled_from("abc"))
    def forget(self, key: str) -> None:
        self.limiter.forget(key)
        self.streak.pop(key, None)

    @invariant()
    def requeues_count_the_streak(self) -> None:
        for key in "abc":
            assert self.limiter.num_requeues(key) == self.streak.get(key, 0)


TestExponentialMachine = ExponentialMachine.TestCase
TestExponentialMachine.settings = settings(max_examples=50, stateful_step_count=30)


# --- token bucket ------------------------------------------------------------------------------


def test_token_bucket_defaults_match_client_go() -> None:
    now = FrozenTime()
    limiter = TokenBucketRateLimiter(now=now)
    assert limiter.policy == TokenBucketPolicy(qps=10, burst=100)
    assert [limiter.when(n) for n in range(100)] == [0.0] * 100
    assert limiter.when("101st") == pytest.approx(0.1)
    assert limiter.when("102nd") == pytest.approx(0.2)


def test_token_bucket_refills_at_qps_up_to_burst() -> None:
    now = FrozenTime()
    limiter = TokenBucketRateLimiter(TokenBucketPolicy(qps=2, burst=3), now=now)
    assert [limiter.when(n) for n in range(3)] == [0, 0, 0]
    now.time += 1.0  # two tokens back
    assert [limiter.when(n) for n in range(3)] == [0, 0, pytest.approx(0.5)]
    now.time += 3600  # a long pause refills to burst, not beyond
    assert [limiter.when(n) for n in range(4)] == [0, 0, 0, pytest.approx(0.5)]


def test_token_bucket_has_no_per_key_memory() -> None:
    limiter = TokenBucketRateLimiter(now=FrozenTime())
    limiter.when("a")
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


@given(qps=st.floats(0.1, 1000), burst=st.integers(1, 50), extra=st.integers(0, 50))
def test_token_bucket_gives_burst_then_one_every_1_over_qps(
    qps: float, burst: int, extra: int
) -> None:
    limiter = TokenBucketRateLimiter(TokenBucketPolicy(qps=qps, burst=burst), now=FrozenTime())
    delays = [limiter.when(n) for n in range(burst + extra)]
    assert delays[:burst] == [0.0] * burst
    assert delays[burst:] == pytest.approx([n / qps for n in range(1, extra + 1)])


@settings(max_examples=200)
@given(
    qps=st.floats(0.5, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_token_bucket_never_releases_more_than_burst_plus_rate(
    qps: float, burst: int, gaps: list[float]
) -> None:
    """Within any window of released times, at most ``burst + qps * window`` items."""
    now = FrozenTime()
    limiter = TokenBucketRateLimiter(TokenBucketPolicy(qps=qps, burst=burst), now=now)
    released = []
    for gap in gaps:
        now.time += gap
        delay = limiter.when("k")
        assert delay >= 0
        released.append(now.time + delay)
    for first in range(len(released)):
        for last in range(first, len(released)):
            window = released[last] - released[first]
            assert last - first + 1 <= burst + qps * window + 1e-6


# --- composition and policies ------------------------------------------------------------------


def test_max_of_asks_every_limiter_and_takes_the_longest_wait() -> None:
    now = FrozenTime()
    slow_start = ExponentialFailureRateLimiter(ExponentialBackoffPolicy(base_delay=1, max_delay=8))
    bucket = TokenBucketRateLimiter(TokenBucketPolicy(qps=1, burst=2), now=now)
    limiter = max_of(slow_start, bucket)
    assert [limiter.when("a") for _ in range(4)] == [1, 2, 4, 8]  # backoff dominates
    assert [limiter.when("b") for _ in range(2)] == [3, 4]  # now the bucket's debt dominates
    assert limiter.num_requeues("a") == 4
    limiter.forget("a")
    assert slow_start.num_requeues("a") == 0


def test_max_of_needs_a_limiter() -> None:
    with pytest.raises(ValueError, match="at least one"):
        max_of()


def test_default_controller_rate_limiter_starts_at_5ms() -> None:
    limiter = default_controller_rate_limiter()
    assert [limiter.when("a") for _ in range(3)] == [0.005, 0.01, 0.02]
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


def test_policies_are_immutable_and_validated() -> None:
    policy = ExponentialBackoffPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.base_delay = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="base_delay"):
        ExponentialBackoffPolicy(base_delay=0)
    with pytest.raises(ValueError, match="qps"):
        TokenBucketPolicy(qps=-1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucketPolicy(burst=0)
