"""The documentation site builds cleanly and keeps up with the code.

- ``mkdocs build --strict`` passes (broken links, pages missing from the nav, bad config fail).
- Every condition type and reason in ``reconcilers/conditions.py``, every SSH error ``reason`` in
  ``capi_remote/ssh/errors.py`` and every job outcome reason in ``reconcilers/`` is explained in
  docs/troubleshooting.md, so a new reason without documentation fails the suite.
- Every ``capi-remote`` command and subcommand has a section in docs/cli.md, and every flag is
  mentioned there.
- Every object of our API group in a YAML example parses into the API models (no unknown fields).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from capi_remote.api import GROUP, v1beta1, v1beta2
from capi_remote.api.serde import from_dict
from capi_remote.cli import build_parser
from reconcilers import conditions

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _code_spans(path: Path) -> set[str]:
    """Everything written as inline code (`like this`) in a Markdown page."""
    return set(re.findall(r"`([^`\n]+)`", path.read_text()))


def _condition_strings() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(conditions).items()
        if name.isupper() and isinstance(value, str)
    }


def _ssh_reasons() -> set[str]:
    text = (ROOT / "capi_remote" / "ssh" / "errors.py").read_text()
    return set(re.findall(r"^\s+reason(?::\s*ClassVar\[str\])?\s*=\s*\"(\w+)\"", text, re.M))


def _job_outcome_reasons() -> set[str]:
    """Reasons of failed job outcomes built in the reconcilers (they reach the conditions)."""
    found: set[str] = set()
    for path in (ROOT / "reconcilers").glob("*.py"):
        found |= set(re.findall(r"Outcome\(\s*False,\s*\"(\w+)\"", path.read_text()))
    return found


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found.append((full, sub))
                found.extend(_subcommands(sub, full))
    return found


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_condition_type_and_reason_is_documented() -> None:
    documented = _code_spans(DOCS / "troubleshooting.md")
    values = _condition_strings()
    assert values, "no constants found in reconcilers/conditions.py"
    missing = sorted(
        f"{name} = {value!r}" for name, value in values.items() if value not in documented
    )
    assert not missing, f"explain these in docs/troubleshooting.md: {missing}"


def test_every_ssh_error_reason_is_documented() -> None:
    documented = _code_spans(DOCS / "troubleshooting.md")
    reasons = _ssh_reasons()
    assert {"HostKeyUnknown", "StepFailed", "SSHError"} <= reasons, reasons
    missing = sorted(reasons - documented)
    assert not missing, f"explain these SSH error reasons in docs/troubleshooting.md: {missing}"


def test_every_job_outcome_reason_is_documented() -> None:
    documented = _code_spans(DOCS / "troubleshooting.md")
    reasons = _job_outcome_reasons()
    assert "InternalError" in reasons, reasons
    missing = sorted(reasons - documented)
    assert not missing, f"explain these job outcome reasons in docs/troubleshooting.md: {missing}"


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    commands = [name for name, _ in _subcommands(build_parser())]
    assert {"run", "dev", "dev up", "preflight", "crds", "version"} <= set(commands), commands
    missing = sorted(command for command in commands if command not in headings)
    assert not missing, f"give these commands a section in docs/cli.md: {missing}"


def test_every_cli_flag_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = sorted(
        f"{name} {flag}"
        for name, sub in _subcommands(build_parser())
        for action in sub._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help" and f"`{flag}" not in text
    )
    assert not missing, f"document these flags in docs/cli.md: {missing}"


def test_yaml_examples_match_the_api() -> None:
    checked = 0
    for page in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            for doc in yaml.safe_load_all(block):
                if not isinstance(doc, dict):
                    continue
                group, _, version = str(doc.get("apiVersion", "")).partition("/")
                if group != GROUP:
                    continue
                models = {"v1beta1": v1beta1, "v1beta2": v1beta2}[version]
                from_dict(getattr(models, doc["kind"]), doc, strict=True)  # raises if wrong
                checked += 1
    assert checked >= 3, "expected YAML examples of our kinds in docs/"
