"""Shared pytest configuration for tests/ and e2e/: fixtures for the real test bed live in
plugin modules."""

pytest_plugins = [
    "tests.fixtures_controlplane",
    "tests.fixtures_hosts",
    "tests.fixtures_node",
    "tests.fixtures_provider",
]
