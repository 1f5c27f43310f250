"""Fixtures for the namespaced sshd hosts: one rootfs and factory per session, fresh hosts per test.

``hosts(n)`` gives a test ``n`` brand-new hosts (a fleet of its own) that are torn down when the
test ends, so fault knobs used by one test never leak into the next. Fleets start in well under a
second once the rootfs is cached, which makes per-test fleets affordable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from capi_remote_testbed import rootfs
from capi_remote_testbed.hosts import Host, HostFleet, sweep


class HostsFactory(Protocol):
    """``hosts(n, **HostFleet kwargs) -> list[Host]``; the hosts' fleet is ``hosts[0].fleet``."""

    def __call__(self, n: int = 1, **kwargs: Any) -> list[Host]: ...


class FleetFactory:
    """Starts fleets on the session's rootfs and remembers them, so none outlives the session."""

    def __init__(self, rootfs_path: Path) -> None:
        self.rootfs = rootfs_path
        self._fleets: list[HostFleet] = []

    def create(self, n: int, **kwargs: Any) -> HostFleet:
        kwargs.setdefault("rootfs", self.rootfs)
        fleet = HostFleet(n, **kwargs)
        self._fleets.append(fleet)
        fleet.start()
        return fleet

    def release(self, fleet: HostFleet) -> None:
        fleet.close()
        if fleet in self._fleets:
            self._fleets.remove(fleet)

    def close_all(self) -> None:
        errors: list[BaseException] = []
        for fleet in list(self._fleets):
            try:
                self.release(fleet)
            except Exception as exc:  # close the others anyway, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the namespaced sshd hosts need root (network namespaces, overlay mounts, pivot_root);"
            " run the integration tests as root, e.g. `sudo make test`",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def host_rootfs() -> Path:
    """The cached Debian rootfs of the hosts (built on first use: ~1 min, needs the mirror)."""
    _require_root()
    return rootfs.ensure_rootfs()


@pytest.fixture(scope="session")
def host_fleet_factory(host_rootfs: Path) -> Iterator[FleetFactory]:
    """Session-wide fleet factory; sweeps leftovers of crashed runs before and after the session."""
    sweep()
    factory = FleetFactory(host_rootfs)
    try:
        yield factory
    finally:
        try:
            factory.close_all()
        finally:
            sweep()


@pytest.fixture
def hosts(host_fleet_factory: FleetFactory) -> Iterator[HostsFactory]:
    """``hosts(n)`` -> ``n`` fresh hosts for this test, torn down after it (even if it fails)."""
    fleets: list[HostFleet] = []

    def make(n: int = 1, **kwargs: Any) -> list[Host]:
        fleet = host_fleet_factory.create(n, **kwargs)
        fleets.append(fleet)
        return fleet.hosts

    yield make
    errors: list[BaseException] = []
    for fleet in fleets:
        try:
            host_fleet_factory.release(fleet)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
