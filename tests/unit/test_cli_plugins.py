"""The ``capi-remote`` command without and with plugins (capi_remote/cliplugins.py): other
distributions add commands and a kubectl through entry points; the product names none of them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from capi_remote import cli
from capi_remote.cliplugins import COMMANDS, KUBECTL, RuntimeFailure, UserError


class _Entry:
    """Stands in for an importlib.metadata.EntryPoint: ``load()`` gives the object."""

    def __init__(self, name: str, target: object) -> None:
        self.name, self.target = name, target

    def load(self) -> object:
        return self.target


def _plugins(monkeypatch: pytest.MonkeyPatch, groups: dict[str, list[_Entry]]) -> None:
    def entry_points(*, group: str) -> list[_Entry]:
        return groups.get(group, [])

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_without_plugins_there_is_no_dev_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _plugins(monkeypatch, {})
    assert _commands(cli.build_parser()) == {
        "run", "preflight", "migrate", "crds", "manifests", "version"
    }  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dev", "up"])
    assert exit_.value.code == 2
    assert "invalid choice: 'dev'" in capsys.readouterr().err


def test_a_plugin_command_runs_and_its_user_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def handler(args: argparse.Namespace) -> int:
        if args.name == "bad":
            raise UserError("bad name")
        seen.append(args.name)
        return 0

    def register(commands: argparse._SubParsersAction[Any]) -> None:
        hello = commands.add_parser("hello")
        hello.add_argument("name")
        hello.set_defaults(handler=handler)

    _plugins(monkeypatch, {COMMANDS: [_Entry("hello", register)]})
    assert cli.main(["hello", "world"]) == 0
    assert seen == ["world"]
    assert cli.main(["hello", "bad"]) == 2
    assert capsys.readouterr().err == "capi-remote: error: bad name\n"


def _no_kubectl_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capi_remote.cli.shutil.which", lambda _: None)


def test_kubectl_comes_from_a_plugin_when_path_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_kubectl_on_path(monkeypatch)
    find: Callable[[Callable[[str], None]], Path] = lambda log: Path("/cache/kubectl")  # noqa: E731
    _plugins(monkeypatch, {KUBECTL: [_Entry("toolchain", find)]})
    assert cli._kubectl() == "/cache/kubectl"


def test_no_kubectl_anywhere_is_a_runtime_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_kubectl_on_path(monkeypatch)

    def broken(log: Callable[[str], None]) -> Path:
        raise RuntimeError("go not found")

    _plugins(monkeypatch, {})
    with pytest.raises(RuntimeFailure, match="no kubectl on PATH: install one"):
        cli._kubectl()
    _plugins(monkeypatch, {KUBECTL: [_Entry("toolchain", broken)]})
    with pytest.raises(RuntimeFailure, match="none could be built: go not found"):
        cli._kubectl()
