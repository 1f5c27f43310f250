"""What ``pip install .`` installs: the product (``capi_remote``, ``reconcilers``), no test bed.

The wheel is built from a copy of the checkout (without build/, caches and the venv, whose stale
files could otherwise end up in it or hide one), with the virtualenv's setuptools and no index, so
the test needs no network. The copy keeps ``testbed/``, so a package pattern that picked it up
would show here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
