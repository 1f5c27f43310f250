"""Fixtures for our provider on the real control plane: CRDs installed, controller running as a
real ``capi-remote run`` process (its log path is printed at the end)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.provider import ControllerProcess, start_controller

RunningController = ControllerProcess


@pytest.fixture(scope="session")
def controller(control_plane: ControlPlane) -> Iterator[ControllerProcess]:
    workdir = Path(tempfile.mkdtemp(prefix="capi-remote-controller-"))
    try:
        running = start_controller(control_plane, workdir, log_level="debug")
    except ControlPlaneError as error:
        pytest.fail(str(error))
    try:
        yield running
    finally:
        running.process.stop()
        # Kept for debugging when asked to (as the control plane's), else removed: every
        # session used to leave a directory in /tmp.
        if os.environ.get("CAPI_REMOTE_KEEP_ENV"):
            print(f"\ncontroller log: {running.process.log}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(str(control_plane.kubeconfig))
    yield client
    await client.close()
