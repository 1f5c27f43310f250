"""Shared pytest configuration for tests/ and e2e/: fixtures for the real test bed live in
plugin modules."""

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures_controlplane",
    "tests.fixtures_hosts",
    "tests.fixtures_node",
    "tests.fixtures_provider",
    "tests.fixtures_tenant",
]

# Property tests assert behaviour, not speed: hypothesis' per-example deadline (200 ms) fails them
# on a loaded 2-core machine (seen with five test runs at once), so it is off everywhere.
settings.register_profile("capi-remote", deadline=None)
settings.load_profile("capi-remote")
