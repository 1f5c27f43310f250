"""The top-level package's public surface: lazy, complete, and in step with what mypy reads.

``import capi_remote.ssh`` must not load the Kubernetes stack; ``from capi_remote import X`` must
keep working for every X the reconcilers, tests and e2e suite import.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import capi_remote

ROOT = Path(__file__).resolve().parents[2]
#: The Kubernetes stack: top-level packages, and our core over them.
KUBERNETES_STACK = ("kubernetes_asyncio", "aiohttp", "capi_remote.kube")


@pytest.mark.parametrize(
    "statement",
    [
        "import capi_remote.ssh",
        "from capi_remote import ssh",
        # The CLI's SSH-only commands (preflight, version), and the parse sandbox's forkserver,
        # which preloads the CLI module when the controller runs as ``python -m capi_remote.cli``.
        "import capi_remote.cli",
    ],
)
def test_the_ssh_runner_does_not_load_the_kubernetes_stack(statement: str) -> None:
    check = (
        f"{statement}; import sys; "
        f"loaded = sorted(m for m in sys.modules if m.startswith({KUBERNETES_STACK!r})); "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_is_the_object_of_its_module() -> None:
    for name, module in capi_remote._PUBLIC.items():
        assert getattr(capi_remote, name) is getattr(importlib.import_module(module), name)
    assert set(capi_remote.__all__) <= set(dir(capi_remote))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        capi_remote.Nothing  # noqa: B018


def test_the_imports_type_checkers_read_match_the_lazy_ones() -> None:
    tree = ast.parse((ROOT / "capi_remote" / "__init__.py").read_text())
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    ]
    typed = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
            typed[alias.name] = node.module
    assert typed == capi_remote._PUBLIC


def _names_imported_from_capi_remote(path: Path) -> set[str]:
    return {
        alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "capi_remote" and node.level == 0
        for alias in node.names
    }


def test_every_name_imported_from_the_package_is_public_or_a_subpackage() -> None:
    files = [p for top in ("reconcilers", "tests", "e2e") for p in (ROOT / top).rglob("*.py")]
    imported = set().union(*map(_names_imported_from_capi_remote, files))
    subpackages = {p.stem if p.suffix else p.name for p in (ROOT / "capi_remote").iterdir()}
    missing = sorted(imported - set(capi_remote.__all__) - subpackages)
    assert imported and not missing, missing
