"""Resource bombs against the real parser (issue 13, point 4): each fails with a clear
``BootstrapParseError`` within its budget, and the controller process's memory stays bounded
because the parse runs in a limited child (``ParseSandbox``)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import multiprocessing
import multiprocessing.forkserver
import pickle
import resource
from pathlib import Path

import pytest

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    ParseSandbox,
    SandboxSettings,
    WriteFile,
    parse_bootstrap,
)
from capi_remote.bootstrap import sandbox as sandbox_module

METADATA = InstanceMetadata(instance_id="uid", local_hostname="node", hostname="node")
MiB = 1 << 20


def alias_gzip_bomb(copies: int = 168) -> bytes:
    """11 KB of YAML naming one 1 MiB gzip file ``copies`` times: 168 MiB of plan before."""
    content = base64.b64encode(gzip.compress(b"\0" * MiB)).decode()
    lines = ["#cloud-config", "x: &f {path: /a, encoding: gz+b64, content: " + content + "}"]
    lines.append("write_files: [" + ", ".join(["*f"] * copies) + "]")
    return ("\n".join(lines) + "\n").encode()


def billion_laughs(levels: int = 9) -> bytes:
    lines = ["#cloud-config", 'a0: &a0 ["lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append(f"runcmd: [*a{levels - 1}]")
    return ("\n".join(lines) + "\n").encode()


def template(body: str) -> bytes:
    return f"## template: jinja\n#cloud-config\n{body}\n".encode()


def refusal(data: bytes) -> BootstrapParseError:
    with pytest.raises(BootstrapParseError) as info:
        parse_bootstrap(data, None, metadata=METADATA)
    return info.value


def test_the_alias_gzip_bomb_is_small_and_exceeds_the_total_budget() -> None:
    data = alias_gzip_bomb()
    assert len(data) < 12_000
    error = refusal(data)
    assert error.key.startswith("write_files[")
    assert "budget of 67108864 bytes" in error.message


def test_a_billion_laughs_is_refused_before_anything_is_built() -> None:
    error = refusal(billion_laughs())
    assert error.key == "(document)" and "budget" in error.message


def test_recursive_aliases_are_refused() -> None:
    assert "recursive" in refusal(b"#cloud-config\nruncmd: &a [*a]\n").message


def test_a_few_aliases_within_budget_still_work() -> None:
    plan = parse_bootstrap(alias_gzip_bomb(copies=3), None, metadata=METADATA)
    assert [len(step.content) for step in plan.steps] == [MiB] * 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{{ "x"|center(10**10) }}', "center argument too large"),
        ('{{ "x".ljust(10**10) }}', "ljust argument too large"),
        ('{{ "x"|indent(10**10) }}', "indent"),
        ('{{ ("x\n" * 10000)|indent("y" * 100000) }}', "indent result too large"),
        ('{{ ("x " * 100000)|wordwrap(1, wrapstring="y" * 100000) }}', "wordwrap result"),
        ('{{ "%0999999999d"|format(1) }}', "format width"),
        ('{{ "%*d" % (999999999, 1) }}', "format width"),
        ('{{ "{:>999999999}".format(1) }}', "format width"),
        (
            '{% set ns = namespace(s="xxxxxxxx") %}'
            "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "concatenation too large",
        ),
        (
            '{% set ns = namespace(s="xxxxxxxx") %}'
            "{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "concatenation too large",
        ),
        ('{{ ("x" * 1000)|replace("x", "y" * 100000) }}', "replace result too large"),
        ('{% set s = "x" * 1000000 %}{{ ([s] * 5000)|join }}', "join result too large"),
        (
            "{% set l = [1] %}{% for i in range(40) %}{% do l.extend(l) %}{% endfor %}",
            "value too large",
        ),
        ("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", "range"),
        ("{{ [1]|batch(10**10, 0)|list }}", "batch argument too large"),
    ],
)
def test_template_bombs_are_refused_by_the_sandbox(body: str, message: str) -> None:
    error = refusal(template(body))
    assert error.key == "(template)"
    assert message in error.message


@pytest.mark.parametrize(
    ("body", "rendered"),
    [
        ('{{ "%d"|format(1700000000) }}', "1700000000"),
        ('{{ "{:>8}".format(12) }}', "      12"),
        ('{{ "ab"|center(6) }}', "  ab  "),
        ('{{ "ab"|indent(2, true) }}', "  ab"),
        ('{{ "a-b"|replace("-", "--") }}', "a--b"),
        ('{{ ["a", "b"]|join(", ") }}', "a, b"),
        ('{% set ns = namespace(s="") %}{% for i in range(3) %}{% set ns.s = ns.s ~ i %}'
         "{% endfor %}{{ ns.s }}", "012"),
    ],
)  # fmt: skip
def test_ordinary_templates_still_render(body: str, rendered: str) -> None:
    plan = parse_bootstrap(template("runcmd: ['" + body + "']"), None, metadata=METADATA)
    assert plan.steps[0].shell == rendered  # type: ignore[union-attr]


def test_lipsum_is_not_available() -> None:
    assert "undefined" in refusal(template("{{ lipsum(10**6) }}")).message


def test_template_output_is_charged_to_the_budget() -> None:
    body = '{% set s = "x" * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}'
    error = refusal(template(body))
    assert error.key == "(template)" and "budget" in error.message


# -- the sandbox ----------------------------------------------------------------------------

SLOW = "{% set l = range(1000)|list %}" + (
    "{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}{% endfor %}{% endfor %}"
)


def children_of_forkserver() -> list[int]:
    pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    if pid is None:
        return []
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


async def wait_for(condition: object, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_sandbox_returns_plans_and_errors() -> None:
    sandbox = ParseSandbox()
    plan = await sandbox.parse(b"#cloud-config\nruncmd: [[echo, hi]]\n", None, metadata=METADATA)
    assert plan.steps[0].argv == ("echo", "hi")  # type: ignore[union-attr]
    with pytest.raises(BootstrapParseError, match="budget"):
        await sandbox.parse(alias_gzip_bomb(), None, metadata=METADATA)


async def test_a_slow_template_is_killed_at_the_wall_deadline() -> None:
    sandbox = ParseSandbox(SandboxSettings(wall_seconds=2))
    with pytest.raises(BootstrapParseError) as info:
        await sandbox.parse(template(SLOW), None, metadata=METADATA)
    assert info.value.key == "(limits)" and "longer than 2s" in info.value.message
    await wait_for(lambda: not children_of_forkserver())


async def test_a_memory_bomb_hits_the_child_limit_not_the_controller() -> None:
    sandbox = ParseSandbox()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # str() of 5000 references to one 1 MB string: 5 GB that no operator check sees.
    body = '{% set s = "x" * 1000000 %}{{ ([s] * 5000)|string|length }}'
    with pytest.raises(BootstrapParseError) as info:
        await sandbox.parse(template(body), None, metadata=METADATA)
    assert info.value.key == "(limits)" and "memory limit" in info.value.message
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


async def test_cancelling_a_parse_kills_its_process() -> None:
    sandbox = ParseSandbox(SandboxSettings(wall_seconds=60))
    task = asyncio.create_task(sandbox.parse(template(SLOW), None, metadata=METADATA))
    await wait_for(children_of_forkserver)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: not children_of_forkserver())


async def test_parses_beyond_the_worker_count_wait() -> None:
    sandbox = ParseSandbox(SandboxSettings(workers=1, wall_seconds=60))
    tasks = [
        asyncio.create_task(sandbox.parse(template(SLOW), None, metadata=METADATA))
        for _ in range(3)
    ]
    await wait_for(children_of_forkserver)
    for _ in range(10):
        assert len(children_of_forkserver()) <= 1
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await wait_for(lambda: not children_of_forkserver())


# -- the child's reply is not trusted --------------------------------------------------------


class Exploit:
    """What a child that escaped the template sandbox could send: code run at unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def reply(obj: object) -> BootstrapParseError | object:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    sender.send_bytes(pickle.dumps(obj))
    sender.close()
    try:
        return sandbox_module._receive(receiver, 1 << 20)
    finally:
        receiver.close()


def test_a_reply_that_runs_code_when_unpickled_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    outcome = reply(Exploit(marker))
    assert isinstance(outcome, BootstrapParseError) and "invalid reply" in outcome.message
    assert not marker.exists()


def test_a_reply_with_a_step_its_validators_refuse_is_refused() -> None:
    step = WriteFile(path="/etc/ok", content=b"x")
    object.__setattr__(step, "path", "/etc/../root/.ssh/authorized_keys")
    outcome = reply(BootstrapPlan(steps=(step,)))
    assert isinstance(outcome, BootstrapParseError) and "invalid reply" in outcome.message


def test_a_valid_reply_is_rebuilt() -> None:
    plan = BootstrapPlan(steps=(WriteFile(path="/a", content=b"x"),), warnings=("w",))
    assert reply(plan) == plan
