"""A real node (containerd + runc, kubelet, kube-scheduler) for the session's control plane, so
Jobs really run: provisionJob mode's e2e flows. Started on first use (about 10 s once built; the
kubelet and scheduler build from the pinned Kubernetes module on the first run)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.node import APT_PACKAGES, Node, NodeError, start_node
from capi_remote_testbed.toolchain import ToolchainError


@pytest.fixture(scope="session")
def node(control_plane: object) -> Iterator[Node]:
    """The node ``capi-remote-node``: Pods with ``hostNetwork: true`` and the image
    ``capi_remote_testbed.nodeimages.SSH_CLIENT_IMAGE`` (sh, ssh, scp) run on it. Only next to the
    local control plane: against another cluster (CAPI_REMOTE_E2E_KUBECONFIG) the tests that
    need it are skipped."""
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("needs the local control plane's node (not available on another cluster)")
    if os.geteuid() != 0:
        pytest.fail("the node (containerd, kubelet) needs root", pytrace=False)
    missing = [tool for tool in ("containerd", "ctr", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run `make system-deps` (Debian packages "
            f"{' '.join(APT_PACKAGES)})",
            pytrace=False,
        )
    try:
        running = start_node(control_plane)
    except (NodeError, ToolchainError) as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield running
    finally:
        running.stop()
