"""What ``pip install .`` installs: the product (``capi_remote``, ``reconcilers``), no test bed;
and what the Containerfile builds from (tests/integration/test_deploy_image.py runs the image).

The wheel is built from a copy of the checkout (without build/, caches and the venv, whose stale
files could otherwise end up in it or hide one), with the virtualenv's setuptools and no index, so
the test needs no network. The copy keeps ``testbed/``, so a package pattern that picked it up
would show here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from capi_remote_testbed import image

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "site", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"
)


def _wheel_files(tmp_path: Path) -> tuple[list[str], str]:
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(wheels), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = wheels.glob("capi_remote-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        return names, archive.read(entry_points).decode()


def test_the_wheel_holds_the_product_and_no_test_bed(tmp_path: Path) -> None:
    names, entry_points = _wheel_files(tmp_path)
    assert {"capi_remote/cli.py", "capi_remote/cliplugins.py", "reconcilers/__init__.py"} <= set(
        names
    )
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("-info")}
    assert top_level == {"capi_remote", "reconcilers"}
    test_bed = [
        name
        for name in names
        if "testbed" in name or "devenv" in name or name.endswith((".go", "go.mod", "go.sum"))
    ]
    assert test_bed == []
    assert "capi_remote.cli:main" in entry_points
    assert "testbed" not in entry_points


def test_the_containerfile_pins_its_base_by_digest_and_ends_from_scratch() -> None:
    text = (ROOT / "Containerfile").read_text()
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)*(:[\w.-]+)?@sha256:[0-9a-f]{64}", default), default
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    # The base serves the builder only: the final stage has none of its shell or packages.
    assert stages == ["${BASE_IMAGE}", "scratch"]


def test_the_test_bed_builds_on_a_base_named_by_digest_only() -> None:
    with pytest.raises(image.ImageError, match="by digest"):
        image.build_image("localhost/capi-remote:never", base="docker.io/library/python:3.11-slim")
