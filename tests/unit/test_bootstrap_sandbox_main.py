"""The parse sandbox's children do not import the controller again when it runs as a module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_children_of_a_module_main_do_not_import_its_stack_again(tmp_path: Path) -> None:
    """``python -m capi_remote.cli run`` (the test bed's way) used to make every parse child
    import the controller's whole stack again: about a second of CPU per parse. Only the
    parent and the forkserver may import it, however many parses run."""
    log = tmp_path / "imports"
    subprocess.run(
        [sys.executable, "-m", "tests.support.sandbox_main", "4"],
        cwd=REPO,
        env={**os.environ, "SANDBOX_IMPORT_LOG": str(log)},
        check=True,
        timeout=120,
    )
    importers = log.read_text().split()
    assert len(importers) == 2, importers  # the parent and the forkserver, no parse child
