"""The controller image, built with podman the way `make image` does (local Debian base by digest,
pip behind the host's CAs), then run: `capi-remote version`, a parse in the sandbox, and the
controller itself against the test control plane with host networking, as a non-root user on a
read-only root filesystem like the Deployment's securityContext. The final stage holds no shell,
pip or package manager, so everything run inside is Python.

Slow (a cold base image is a debootstrap, ~1-2 min; warm builds reuse the cached base and layers):
deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from capi_remote_testbed import image as image_module
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.net import free_port
from capi_remote_testbed.provider import install_crds, issue_webhook_certificate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAG = "localhost/capi-remote:test"
UID = "65532"


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (`make system-deps` installs podman and runc)")
    info = image_module.podman("info", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run on this machine: {info.stderr.strip()}")
    return image_module.build_image(TAG, ca_bundle=image_module.default_ca_bundle())


def test_image_runs_as_non_root_with_the_cli_as_entrypoint(image: str) -> None:
    version = image_module.podman("run", "--rm", image, "version").stdout
    assert version.startswith("capi-remote ")
    (inspected,) = json.loads(image_module.podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["capi-remote"]
    assert config["Cmd"] == ["run"]
    assert _python(image, "import os; print(os.getuid(), os.getgid())") == f"{UID} {UID}\n"


def test_the_image_holds_no_shell_no_installer_no_package_manager(image: str) -> None:
    """Whatever could be executed is the interpreter or a script of the venv's (a ``#!`` naming
    a missing interpreter, like ``/usr/bin/env`` in the standard library's, cannot run); pip,
    setuptools and dpkg's database are gone."""
    found = _python(
        image,
        "import importlib.util, os, pathlib, sys\n"
        "python = os.path.realpath(sys.executable)\n"
        "def runs_other(p):\n"
        "    head = p.read_bytes()[:256]\n"
        "    if head.startswith(b'\\x7fELF'):\n"
        "        return '.so' not in p.name and str(p) != python\n"
        "    if head.startswith(b'#!'):\n"
        "        interpreter = head[2:].split()[0].decode()\n"
        "        return os.path.exists(interpreter) and os.path.realpath(interpreter) != python\n"
        "    return False\n"
        "files = [p for p in pathlib.Path('/').rglob('*') if p.parts[1:2] and p.parts[1] not in"
        " ('proc', 'sys', 'dev') and p.is_file() and not p.is_symlink()"
        " and os.access(p, os.X_OK)]\n"
        "print([str(p) for p in files if runs_other(p)])\n"
        "print([m for m in ('pip', 'setuptools', 'ensurepip') if importlib.util.find_spec(m)])\n"
        "print([p for p in ('/bin/sh', '/var/lib/dpkg', '/etc/apt') if os.path.lexists(p)])",
        user="0",
    )
    assert found == "[]\n[]\n[]\n", found


def test_the_parse_sandbox_works_without_a_shell(image: str) -> None:
    """The forkserver and its children are started from the interpreter itself, never via sh."""
    out = _python(
        image,
        "import asyncio\n"
        "from capi_remote.bootstrap import InstanceMetadata, ParseSandbox\n"
        "meta = InstanceMetadata(instance_id='i', local_hostname='h', hostname='h')\n"
        "data = b'#cloud-config\\nruncmd: [[echo, hi]]\\n'\n"
        "plan = asyncio.run(ParseSandbox().parse(data, None, metadata=meta))\n"
        "print(plan.steps[0].argv)",
        "--read-only",
        "--tmpfs",
        "/tmp",
    )
    assert out == "('echo', 'hi')\n"


def test_the_image_holds_no_test_bed(image: str) -> None:
    """Only the product's wheel is installed: no test-bed package, no Go module of its toolchain."""
    found = _python(
        image,
        "import pathlib; print([str(p) for p in pathlib.Path('/').rglob('*')"
        " if p.name.startswith('capi_remote_testbed') or p.name == 'go.mod'])",
        user="0",
    )
    assert found == "[]\n"
    installed = _python(
        image,
        "import capi_remote, reconcilers, sys; print([m for m in sys.modules if 'testbed' in m])",
    )
    assert installed == "[]\n"


def test_build_time_ca_stays_out_of_the_image(image: str) -> None:
    """The machine's extra CAs reach pip as a build secret, never a file in the image."""
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    if not extra:
        pytest.skip("this machine trusts no extra CAs")
    # A line of the certificate's base64 body: unique to it, whatever file it might be copied to.
    needle = extra[0].read_text().splitlines()[1]
    found = _python(
        image,
        f"import pathlib; needle = {needle.encode()!r}\n"
        "print([str(p) for p in pathlib.Path('/').rglob('*') if p.parts[1:2] not in"
        " (('proc',), ('sys',), ('dev',)) and p.is_file() and not p.is_symlink()"
        " and needle in p.read_bytes()])",
        user="0",
    )
    assert found == "[]\n"


@pytest.fixture
def container_files(control_plane: ControlPlane, tmp_path: Path) -> Path:
    """Kubeconfig and webhook certificate, readable by the image's non-root user."""
    files = tmp_path / "mounted"
    files.mkdir()
    shutil.copy(control_plane.kubeconfig, files / "kubeconfig")
    issue_webhook_certificate(control_plane, files / "certs")
    for path in [files, *files.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return files


def test_image_runs_the_controller(
    image: str, control_plane: ControlPlane, container_files: Path
) -> None:
    crds = control_plane.kubectl("get", "crd", "-o", "name")
    if "remotemachines.infrastructure.cluster.x-k8s.io" not in crds:
        install_crds(control_plane, free_port())
    health, metrics = free_port(), free_port()
    name = f"capi-remote-test-{uuid.uuid4().hex[:8]}"
    image_module.podman(
        "run", "--detach", "--name", name,
        "--network", "host",
        "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{container_files}:/config:ro",
        image, "run",
        "--kubeconfig=/config/kubeconfig",
        "--webhook-cert-dir=/config/certs",
        f"--webhook-port={free_port()}",
        f"--health-addr=127.0.0.1:{health}",
        f"--metrics-bind-address=127.0.0.1:{metrics}",
        "--insecure-metrics",
        # Reconcile nothing: other tests' objects belong to their own controller.
        f"--watch-filter={name}",
        "--log-format=json",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _ok(f"http://127.0.0.1:{health}/readyz"):
            state = image_module.podman("inspect", "--format", "{{.State.Status}}", name)
            output = image_module.podman("logs", name)
            logs = output.stdout + output.stderr
            assert state.stdout.strip() == "running", logs
            assert time.monotonic() < deadline, f"not ready after 60 s: {logs}"
            time.sleep(0.5)
        assert _ok(f"http://127.0.0.1:{metrics}/metrics")
    finally:
        image_module.podman("rm", "--force", "--time", "5", name, check=False)


def _python(image: str, code: str, *options: str, user: str = UID) -> str:
    """``code`` run by the image's interpreter (there is no shell or coreutils to run)."""
    return image_module.podman(
        "run", "--rm", "--user", user, *options, "--entrypoint", "python3", image, "-c", code
    ).stdout  # fmt: skip


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
