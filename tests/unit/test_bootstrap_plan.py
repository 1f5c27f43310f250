"""Step types: validation, digests, redaction, and to_shell() through a real sh."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    MakeDirectory,
    RunCommand,
    Step,
    WriteFile,
)
from capi_remote.bootstrap.plan import normalise_path

# Text a shell argument can carry: anything but NUL and lone surrogates.
ARG_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=40,
)


@pytest.fixture(scope="module")
def print_argv(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An executable printing its arguments NUL-separated."""
    path = tmp_path_factory.mktemp("bin") / "print-argv"
    path.write_text('#!/bin/sh\nfor arg in "$@"; do printf \'%s\\0\' "$arg"; done\n')
    path.chmod(0o755)
    return str(path)


def run_sh(command_line: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", command_line], capture_output=True, check=False, cwd=cwd)


def printed_args(output: bytes) -> list[str]:
    assert output.endswith(b"\0") or output == b""
    return [arg.decode() for arg in output.split(b"\0")[:-1]]


TRICKY_ARGS = [
    "plain",
    "with space",
    "it's",
    'double "quoted"',
    "$HOME and ${PATH} and $(id) and `id`",
    "back\\slash\\n",
    "new\nline",
    "tab\there",
    "*",
    "~",
    "",
    "-n",
    "a=b",
    "; rm -rf /tmp/never",
    "ünïcödé ✓",
]


def test_argv_to_shell_passes_every_argument_literally(print_argv: str) -> None:
    command = RunCommand(argv=(print_argv, *TRICKY_ARGS))
    result = run_sh(command.to_shell())
    assert result.returncode == 0, result.stderr
    assert printed_args(result.stdout) == TRICKY_ARGS


@settings(max_examples=200, deadline=None)
@given(args=st.lists(ARG_TEXT, max_size=6))
def test_argv_to_shell_round_trips_arbitrary_text(print_argv: str, args: list[str]) -> None:
    result = run_sh(RunCommand(argv=(print_argv, *args)).to_shell())
    assert result.returncode == 0, result.stderr
    assert printed_args(result.stdout) == args


def test_program_name_is_never_a_keyword_or_assignment(tmp_path: Path) -> None:
    # Unquoted, "if" would be parsed as a keyword and "A=b" as an assignment.
    for name in ("if", "A=b"):
        program = tmp_path / name
        program.write_text("#!/bin/sh\necho ran\n")
        program.chmod(0o755)
        result = run_sh(f"PATH={tmp_path}:$PATH; " + RunCommand(argv=(name,)).to_shell())
        assert result.stdout == b"ran\n", (name, result.stderr)


def test_shell_to_shell_runs_the_string_in_sh(print_argv: str) -> None:
    script = (
        f"X='a b'; {print_argv} \"$X\" 'it'\"'\"'s' \"back\\\\slash\" \"$(printf 'new\\nline')\""
    )
    direct = run_sh(script)
    wrapped = run_sh(RunCommand(shell=script).to_shell())
    assert wrapped.returncode == 0, wrapped.stderr
    assert printed_args(wrapped.stdout) == ["a b", "it's", "back\\slash", "new\nline"]
    assert wrapped.stdout == direct.stdout


def test_shell_multiline_script_keeps_state_between_lines(tmp_path: Path) -> None:
    command = RunCommand(shell="cd /\nexport GREETING='hi there'\necho \"$PWD $GREETING\"\n")
    result = run_sh(command.to_shell(), cwd=tmp_path)
    assert result.stdout == b"/ hi there\n"


def test_env_is_set_for_argv_and_shell(print_argv: str) -> None:
    env = (("INSTANCE_ID", "id with 'quote' and $x"),)
    as_argv = RunCommand(argv=("sh", "-c", 'printf %s "$INSTANCE_ID"'), env=env)
    as_shell = RunCommand(shell='printf %s "$INSTANCE_ID"', env=env)
    for command in (as_argv, as_shell):
        assert run_sh(command.to_shell()).stdout == b"id with 'quote' and $x"


def test_run_command_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RunCommand()
    with pytest.raises(ValueError, match="exactly one"):
        RunCommand(argv=("a",), shell="a")
    with pytest.raises(ValueError, match="non-empty"):
        RunCommand(argv=())
    with pytest.raises(ValueError, match="program"):
        RunCommand(argv=("", "b"))
    with pytest.raises(ValueError, match="NUL"):
        RunCommand(argv=("a", "b\x00"))
    with pytest.raises(ValueError, match="NUL"):
        RunCommand(shell="a\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        RunCommand(shell="\udcff")
    with pytest.raises(ValueError, match="phase"):
        RunCommand(shell="a", phase="final")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifiers"):
        RunCommand(shell="a", env=(("1X", "v"),))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/etc/foo", "/etc/foo"),
        ("//etc//./foo/", "/etc/foo"),
        ("/etc/./kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.crt"),
    ],
)
def test_normalise_path(raw: str, normal: str) -> None:
    assert normalise_path(raw) == normal


@pytest.mark.parametrize(
    "bad", ["etc/foo", "", "/", "//", "/etc/../shadow", "/a/..", "/a\nb", "/a\x00b", "/\udcff"]
)
def test_normalise_path_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_path(bad)


def test_steps_only_accept_normalised_paths_and_valid_fields() -> None:
    with pytest.raises(ValueError, match="normalised"):
        WriteFile(path="/etc//foo", content=b"")
    with pytest.raises(ValueError):
        WriteFile(path="/etc/foo", content=b"", mode=0o10000)
    with pytest.raises(ValueError):
        WriteFile(path="/etc/foo", content=b"", owner="root root")
    with pytest.raises(ValueError):
        MakeDirectory(path="/etc/foo", owner="-rf")
    with pytest.raises(TypeError):
        WriteFile(path="/etc/foo", content="text")  # type: ignore[arg-type]
    for owner in ("root", "root:root", "1000:1000", ":docker", "www-data:www-data"):
        assert WriteFile(path="/etc/foo", content=b"", owner=owner).owner == owner


def _variants(step: Step) -> list[Step]:
    if isinstance(step, WriteFile):
        return [
            attrs.evolve(step, path="/etc/other"),
            attrs.evolve(step, content=step.content + b"!"),
            attrs.evolve(step, mode=0o600),
            attrs.evolve(step, owner="root:root"),
            attrs.evolve(step, append=True),
            attrs.evolve(step, deferred=True),
        ]
    if isinstance(step, MakeDirectory):
        return [
            attrs.evolve(step, path="/opt/other"),
            attrs.evolve(step, mode=0o700),
            attrs.evolve(step, owner="core"),
        ]
    return [
        attrs.evolve(step, argv=(*(step.argv or ()), "x")),
        RunCommand(shell="echo hi"),
        attrs.evolve(step, phase="bootcmd"),
        attrs.evolve(step, env=(("INSTANCE_ID", "x"),)),
    ]


STEPS: list[Step] = [
    WriteFile(path="/etc/foo", content=b"secret-token"),
    MakeDirectory(path="/opt/data"),
    RunCommand(argv=("echo", "hi")),
]


@pytest.mark.parametrize("step", STEPS)
def test_digest_is_stable_and_sensitive_to_every_field(step: Step) -> None:
    same = attrs.evolve(step)
    assert same.digest == step.digest
    assert len(step.digest) == 64
    assert int(step.digest, 16) >= 0
    digests = {step.digest} | {v.digest for v in _variants(step)}
    assert len(digests) == 1 + len(_variants(step))


def test_digests_differ_across_step_types_and_argv_vs_shell() -> None:
    assert RunCommand(argv=("echo hi",)).digest != RunCommand(shell="echo hi").digest
    assert (
        RunCommand(argv=("a", "b")).digest != RunCommand(argv=("a b",)).digest
    )  # no ambiguous joining
    assert len({s.digest for s in STEPS}) == len(STEPS)


def test_digest_is_pinned() -> None:
    # Changing the canonical encoding re-runs every bootstrap step on every host: it must be a
    # deliberate change (bump the encoding version), never an accident.
    step = WriteFile(path="/etc/foo", content=b"hello", mode=0o600, owner="root:root")
    content_sha256 = hashlib.sha256(b"hello").hexdigest()
    canonical = (
        f'{{"append":false,"content_sha256":"{content_sha256}","deferred":false,"mode":384,'
        '"owner":"root:root","path":"/etc/foo","step":"write_file","v":1}'
    )
    assert step.digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert step.digest == "a21e6e953222d07a79b60f2fe76264d7324c6fb74e95e7660d87b951e19ef7ec"


def test_plan_digest_covers_steps_and_order() -> None:
    plan = BootstrapPlan(steps=tuple(STEPS))
    assert plan.digest == BootstrapPlan(steps=tuple(STEPS), warnings=("w",)).digest
    assert plan.digest == BootstrapPlan(steps=tuple(STEPS), format="script").digest
    assert plan.digest != BootstrapPlan(steps=tuple(reversed(STEPS))).digest
    assert plan.digest != BootstrapPlan(steps=tuple(STEPS[:-1])).digest
    changed = (STEPS[0], STEPS[1], RunCommand(argv=("echo", "bye")))
    assert plan.digest != BootstrapPlan(steps=changed).digest
    assert hash(plan) == hash(BootstrapPlan(steps=tuple(STEPS)))


def test_repr_and_describe_never_show_contents_or_commands() -> None:
    steps: list[Step] = [
        WriteFile(path="/etc/kubeadm.yml", content=b"token: s3cr3t", mode=0o600),
        RunCommand(argv=("kubeadm", "join", "--token", "s3cr3t")),
        RunCommand(shell="kubeadm join --token s3cr3t\necho done"),
        RunCommand(argv=("TOKEN=s3cr3t",)),
        RunCommand(shell="true", env=(("INSTANCE_ID", "s3cr3t"),)),
    ]
    text = repr(BootstrapPlan(steps=tuple(steps))) + " ".join(s.describe() for s in steps)
    assert "s3cr3t" not in text
    assert "/etc/kubeadm.yml" in text
    assert "mode=0o600" in text
    assert steps[1].describe() == "runcmd: kubeadm with 3 argument(s)"
    assert steps[2].describe() == "runcmd: shell command (2 line(s))"


def test_parse_error_pickles_with_its_fields() -> None:
    error = BootstrapParseError("write_files[2].encoding", "unsupported encoding")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.message, str(copy)) == (
        "write_files[2].encoding",
        "unsupported encoding",
        "write_files[2].encoding: unsupported encoding",
    )
