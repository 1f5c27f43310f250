"""Transport pieces that need no server: output tails, handshake caps and retries, error types."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capi_remote.ssh import errors
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import AuthenticationFailed, HostUnreachable, SSHError
from capi_remote.ssh.hostkeys import HostKeyPolicy
from capi_remote.ssh.paramiko_transport import (
    HandshakeLimiter,
    ParamikoConnector,
    _handshake_error,
    _TransientHandshake,
)
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import OutputTail

TARGET = Target(
    address="10.0.0.1",
    credentials=Credentials(password="x"),
    host_key=HostKeyPolicy.skip_verification(),
)
QUICK = SSHSettings(handshake_backoff=0.01, handshake_backoff_max=0.02, handshake_attempts=4)


@given(chunks=st.lists(st.binary(max_size=50), max_size=30), limit=st.integers(0, 64))
def test_output_tail_keeps_exactly_the_last_bytes(chunks: list[bytes], limit: int) -> None:
    tail = OutputTail(limit)
    for chunk in chunks:
        tail.feed(chunk)
    everything = b"".join(chunks)
    assert tail.data == (everything[-limit:] if limit else b"")
    assert tail.total == len(everything)


def test_handshake_limiter_caps_concurrency_per_host() -> None:
    limiter = HandshakeLimiter(3)
    active: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    lock = threading.Lock()

    def handshake(host: str) -> None:
        with limiter.slot((host, 22), timeout=10):
            with lock:
                active[host] += 1
                peak[host] = max(peak[host], active[host])
            time.sleep(0.02)
            with lock:
                active[host] -= 1

    threads = [threading.Thread(target=handshake, args=(h,)) for h in "ab" * 10]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == {"a": 3, "b": 3}


def test_handshake_limiter_gives_up_after_its_timeout() -> None:
    limiter = HandshakeLimiter(1)
    with (
        limiter.slot(("h", 22), timeout=1),
        pytest.raises(HostUnreachable, match="slot"),
        limiter.slot(("h", 22), timeout=0.05),
    ):
        pass


def fake_handshakes(connector: ParamikoConnector, failures: list[BaseException]) -> list[int]:
    calls: list[int] = []

    def handshake(target: Target, sock: Any, ticket: Any) -> tuple[Any, str]:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "transport", "SHA256:fp"

    connector._handshake = handshake  # type: ignore[method-assign]
    return calls


def test_dropped_handshakes_are_retried() -> None:
    connector = ParamikoConnector(QUICK)
    dropped: list[BaseException] = [_TransientHandshake("no SSH banner") for _ in range(2)]
    calls = fake_handshakes(connector, dropped)
    opened: Any = connector._open_hop(TARGET, lambda: None, None)  # type: ignore[arg-type, return-value]
    assert opened == ("transport", "SHA256:fp")
    assert len(calls) == 3


def test_retries_end_as_host_unreachable() -> None:
    connector = ParamikoConnector(QUICK)
    calls = fake_handshakes(connector, [_TransientHandshake("no SSH banner")] * 10)
    with pytest.raises(HostUnreachable, match="no SSH banner") as unreachable:
        connector._open_hop(TARGET, lambda: None, None)  # type: ignore[arg-type, return-value]
    assert len(calls) == QUICK.handshake_attempts and unreachable.value.retryable


def test_other_failures_are_not_retried() -> None:
    connector = ParamikoConnector(QUICK)
    calls = fake_handshakes(connector, [AuthenticationFailed("h", "root", "key rejected")])
    with pytest.raises(AuthenticationFailed):
        connector._open_hop(TARGET, lambda: None, None)  # type: ignore[arg-type, return-value]
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (paramiko.SSHException("Error reading SSH protocol banner"), True),
        (EOFError(), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"), False),
        (None, False),
    ],
)
def test_handshake_errors_are_classified(exc: BaseException | None, transient: bool) -> None:
    error = _handshake_error(TARGET, exc)
    assert isinstance(error, _TransientHandshake) is transient
    if not transient:
        assert isinstance(error, HostUnreachable)


def test_every_error_has_a_condition_reason() -> None:
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, SSHError) and cls is not SSHError
    ]
    reasons = [cls.reason for cls in classes]
    assert len(set(reasons)) == len(reasons), "reasons are distinct"
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", reason) for reason in reasons)
    retryable = {cls.__name__ for cls in classes if cls.retryable}
    assert retryable == {
        "HostUnreachable",
        "ConnectionLost",
        "HostLocked",
        "HostNotClean",
        "StepFailed",
        "StepTimeout",
        "JobTimeout",
        "JobCancelled",
        "JobDetached",
        "RemoteError",
    }


def test_step_errors_keep_output_out_of_the_message() -> None:
    failed = errors.StepFailed(2, "runcmd: kubeadm with 3 argument(s)", 1, "token=abc.def")
    assert "token" not in str(failed) and failed.output_tail == "token=abc.def"
    assert str(failed).startswith("step 3 (runcmd: kubeadm with 3 argument(s))")
