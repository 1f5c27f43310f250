"""``.ci/conflict-markers`` (run by ``make lint`` and here, so by CI): a conflict committed
unresolved fails with a clear message; rst tables and underlines do not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "conflict-markers"
# Built here, so this file holds no marker at the start of a line itself.
OURS, BASE, SEPARATOR, THEIRS = "<" * 7 + " HEAD", "|" * 7 + " base", "=" * 7, ">" * 7 + " p5"


def _check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def _repository(tmp_path: Path, text: str) -> Path:
    (tmp_path / "benchmarks.md").write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "benchmarks.md"], check=True)
    return tmp_path


def test_this_checkout_has_no_conflict_markers() -> None:
    result = _check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "conflict",
    [
        f"{OURS}\nours\n{SEPARATOR}\ntheirs\n{THEIRS}\n",
        f"{OURS}\nours\n{BASE}\nbase\n{SEPARATOR}\ntheirs\n{THEIRS}\n",
        f"resolved, but one marker was left behind\n{THEIRS}\n",
    ],
)
def test_a_committed_conflict_fails_naming_the_lines(tmp_path: Path, conflict: str) -> None:
    result = _check(_repository(tmp_path, f"# E1\n\nsome text\n{conflict}"))
    assert result.returncode == 1
    assert "benchmarks.md:" in result.stdout
    assert "merge-conflict markers" in result.stderr


def test_rst_tables_and_underlines_are_not_markers(tmp_path: Path) -> None:
    text = (
        "Columns\n=======================\n\n"
        "=====  ======\nfield  meaning\n=====  ======\n"
        "quoted: =======\n    =======\n"
    )
    assert _check(_repository(tmp_path, text)).returncode == 0
