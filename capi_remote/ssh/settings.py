"""All knobs of the SSH runner in one frozen object, so a deployment tunes them in one place."""

from __future__ import annotations

import attrs
from attrs.validators import ge, instance_of


def _absolute(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/") or any(c in value for c in "\n\0"):
        raise ValueError(f"{attribute.name} must be an absolute path")


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds")


@attrs.frozen
class SSHSettings:
    """Limits, deadlines and on-host paths.

    Deadlines are in seconds. ``connect_timeout`` covers the TCP connect (or the bastion's
    ``direct-tcpip`` channel), ``banner_timeout`` the wait for sshd's banner, ``handshake_timeout``
    key exchange, ``auth_timeout`` authentication. ``command_timeout`` bounds each helper command
    (lock, state, file and directory steps); ``step_timeout`` each command step; ``job_timeout`` a
    whole job. The on-host paths are settings so tests can point them elsewhere.

    ``cpu_slots`` jobs at a time get this process's CPU (handshakes, helper calls); a wait on the
    host holds a slot at most ``admission_hold`` (see :mod:`capi_remote.ssh.admission`).
    """

    max_workers: int = attrs.field(default=256, validator=[instance_of(int), ge(1)])
    cpu_slots: int = attrs.field(default=4, validator=[instance_of(int), ge(1)])
    admission_hold: float = attrs.field(default=1.0, validator=_seconds)
    handshakes_per_host: int = attrs.field(default=4, validator=[instance_of(int), ge(1)])
    handshake_attempts: int = attrs.field(default=5, validator=[instance_of(int), ge(1)])
    handshake_backoff: float = attrs.field(default=0.2, validator=_seconds)
    handshake_backoff_max: float = attrs.field(default=3.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=10.0, validator=_seconds)
    banner_timeout: float = attrs.field(default=15.0, validator=_seconds)
    handshake_timeout: float = attrs.field(default=15.0, validator=_seconds)
    auth_timeout: float = attrs.field(default=15.0, validator=_seconds)
    command_timeout: float = attrs.field(default=60.0, validator=_seconds)
    step_timeout: float = attrs.field(default=1800.0, validator=_seconds)
    job_timeout: float = attrs.field(default=3600.0, validator=_seconds)
    keepalive_interval: int = attrs.field(default=15, validator=[instance_of(int), ge(0)])
    #: A connection whose sent data (a request, a keepalive) stays unacknowledged this long is
    #: dead (TCP_USER_TIMEOUT): a pulled cable ends a job in about keepalive + this, never
    #: in the kernel's 15 minutes of retransmissions.
    dead_link_timeout: float = attrs.field(default=30.0, validator=_seconds)
    lock_heartbeat_interval: float = attrs.field(default=10.0, validator=_seconds)
    lock_stale_after: int = attrs.field(default=60, validator=[instance_of(int), ge(1)])
    kill_grace: int = attrs.field(default=5, validator=[instance_of(int), ge(0)])
    output_tail_bytes: int = attrs.field(default=4096, validator=[instance_of(int), ge(0)])
    state_root: str = attrs.field(default="/var/lib/capi-remote", validator=_absolute)
    #: In a directory only the helpers' user (root) may write: see ``hostscript.py``.
    lock_path: str = attrs.field(default="/run/capi-remote/host.lock", validator=_absolute)
    sentinel_path: str = attrs.field(
        default="/run/cluster-api/bootstrap-success.complete", validator=_absolute
    )

    def __attrs_post_init__(self) -> None:
        if self.lock_heartbeat_interval * 2 > self.lock_stale_after:
            raise ValueError("lock_stale_after must be at least twice lock_heartbeat_interval")
