"""Where to connect: address, login, host key policy, and optionally a bastion to go through."""

from __future__ import annotations

import re

import attrs
from attrs.validators import instance_of

from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.hostkeys import DEFAULT_PORT, HostKeyPolicy

_ADDRESS = re.compile(r"[A-Za-z0-9.:_%-]{1,253}")


def _check_address(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not _ADDRESS.fullmatch(value):
        raise ValueError("address must be an IP address or DNS name")


def _check_port(_: object, __: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("port must be within 1..65535")


def _check_timeout(_: object, __: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError("connect_timeout must be > 0 seconds")


@attrs.frozen(kw_only=True)
class Target:
    """One SSH host. ``via`` is a bastion (itself a full target with its own key and policy)
    through which this host's address is reached with a ``direct-tcpip`` channel."""

    address: str = attrs.field(validator=_check_address)
    port: int = attrs.field(default=DEFAULT_PORT, validator=_check_port)
    credentials: Credentials = attrs.field(validator=instance_of(Credentials))
    host_key: HostKeyPolicy = attrs.field(validator=instance_of(HostKeyPolicy))
    via: Target | None = None
    #: Overrides the runner's TCP connect, banner, key-exchange and authentication deadlines
    #: (each stage gets this many seconds) for this hop; ``None`` keeps the runner's settings.
    connect_timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    #: Whose share of the runner's CPU slots this host's jobs take (the namespace): see
    #: :mod:`capi_remote.ssh.admission`.
    tenant: str = ""

    @property
    def display(self) -> str:
        """``user@address:port`` (``... via bastion``) for messages and logs."""
        shown = f"{self.credentials.user}@{self.address}:{self.port}"
        return shown if self.via is None else f"{shown} via {self.via.display}"

    @property
    def endpoint(self) -> tuple[tuple[str, int], ...]:
        """The hop chain, bastions first: identifies "the same host" for in-process locking."""
        hops = () if self.via is None else self.via.endpoint
        return (*hops, (self.address, self.port))
