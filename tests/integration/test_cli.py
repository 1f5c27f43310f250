"""The capi-remote command as a user runs it: preflight against real hosts, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures_hosts import HostsFactory

pytestmark = pytest.mark.integration


def capi_remote(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capi_remote.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_preflight_passes_then_fails_on_a_changed_host_key(
    hosts: HostsFactory, tmp_path: Path
) -> None:
    host = hosts(1)[0]
    known_hosts = host.fleet.write_known_hosts(tmp_path / "known_hosts")
    args = [
        "preflight", "--address", host.address, "--user", "deploy",
        "--key", str(host.fleet.client_key_path), "--known-hosts", str(known_hosts),
    ]  # fmt: skip
    ok = capi_remote(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert host.name in ok.stdout
    assert host.host_key.fingerprint in ok.stdout
    assert "FAILED" not in ok.stdout

    host.regenerate_host_key()
    changed = capi_remote(*args)
    assert changed.returncode == 1
    assert "HostKeyMismatch" in changed.stdout
    assert "not checked" in changed.stdout  # nothing after the host key was attempted


def test_preflight_reports_sudo_that_needs_a_password(hosts: HostsFactory, tmp_path: Path) -> None:
    host = hosts(1)[0]
    known_hosts = host.fleet.write_known_hosts(tmp_path / "known_hosts")
    result = capi_remote(
        "preflight", "--address", host.address, "--user", "operator",
        "--key", str(host.fleet.client_key_path), "--known-hosts", str(known_hosts),
    )  # fmt: skip
    assert result.returncode == 1
    assert "SudoFailed" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["preflight", "--address", "h", "--port", "70000"], "--port must be within 1..65535"),
        (["preflight", "--address", "h", "--key", "/nonexistent"], "cannot read key file"),
        (["preflight", "--address", "h", "--password-env", "NOPE_NOT_SET"], "NOPE_NOT_SET"),
        (["run", "--kubeconfig", "/nonexistent"], "kubeconfig /nonexistent does not exist"),
        (["run", "--machine-concurrency", "0"], "--machine-concurrency must be at least 1"),
        (["frobnicate"], "invalid choice"),
        (["dev", "up", "--hosts", "1"], "--hosts must be at least 2"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = capi_remote(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_crds_and_version() -> None:
    crds = capi_remote("crds")
    assert crds.returncode == 0
    names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(crds.stdout) if doc}
    assert "remotemachines.infrastructure.cluster.x-k8s.io" in names
    assert len(names) == 5
    version = capi_remote("version")
    assert version.returncode == 0
    assert version.stdout.startswith("capi-remote ")


def test_manifests_prints_the_components_to_deploy() -> None:
    result = capi_remote("manifests")
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds.count("CustomResourceDefinition") == 5
    assert kinds.count("Namespace") == 1
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= set(kinds)
