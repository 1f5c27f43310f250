"""Fuzzing: any input yields a plan or a BootstrapParseError, never another exception."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    RunCommand,
    parse_bootstrap,
)

METADATA = InstanceMetadata(instance_id="uid", local_hostname="node", hostname="node")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CLOUD_KEYS = [
    "write_files",
    "runcmd",
    "bootcmd",
    "path",
    "content",
    "encoding",
    "permissions",
    "owner",
    "append",
    "defer",
    "source",
    "packages",
    "users",
]
IGNITION_KEYS = [
    "ignition",
    "version",
    "config",
    "merge",
    "replace",
    "storage",
    "files",
    "directories",
    "links",
    "path",
    "contents",
    "source",
    "compression",
    "verification",
    "hash",
    "append",
    "mode",
    "user",
    "group",
    "id",
    "name",
    "overwrite",
    "filesystem",
    "systemd",
    "units",
    "enabled",
    "enable",
    "mask",
    "dropins",
    "passwd",
    "networkd",
    "kernelArguments",
]

YAML_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
YAMLISH = st.recursive(
    YAML_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(CLOUD_KEYS) | st.text(max_size=6) | st.integers(), children, max_size=4
        )
    ),
    max_leaves=15,
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSONISH = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(IGNITION_KEYS) | st.text(max_size=6), children, max_size=4
        )
    ),
    max_leaves=15,
)


PATHS = st.sampled_from(["/etc/a", "/etc//b/", "//x/./y"]) | st.from_regex(
    r"/[a-z]{1,6}/[a-z.]{1,6}", fullmatch=True
)


def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``valid``: junk in every field would make nearly every document invalid."""
    # Hypothesis favours boundary values, so junk sits on a roll in the middle of the range.
    return st.integers(0, 19).flatmap(lambda roll: junk if roll == 7 else valid)


def encoded(data: bytes, encoding: str) -> object:
    if encoding in ("b64", "base64"):
        return base64.b64encode(data).decode()
    if encoding.startswith("gz") and "b" in encoding[2:]:
        return base64.b64encode(gzip.compress(data)).decode()
    if encoding in ("gz", "gzip"):
        return gzip.compress(data)
    return data


@st.composite
def write_file_entry(draw: st.DrawFn) -> dict[str, Any]:
    encoding = draw(
        st.sampled_from(
            ["b64", "base64", "gz", "gzip", "gz+b64", "gzip+base64", "text/plain", "bogus"]
        )
    )
    content = draw(
        mostly(st.binary(max_size=30).map(lambda data: encoded(data, encoding)), YAMLISH)
    )
    candidates: dict[str, Any] = {
        "path": draw(mostly(PATHS, st.sampled_from(["rel", "/a/../b", "/"]) | YAMLISH)),
        "encoding": draw(mostly(st.just(encoding), YAMLISH)),
        "content": content,
        "permissions": draw(
            mostly(st.sampled_from(["0644", "0o600", "644", 420]), st.just("rw") | YAMLISH)
        ),
        "owner": draw(
            mostly(st.sampled_from(["root:root", "core", ":g"]), st.just("a b") | YAMLISH)
        ),
        "append": draw(mostly(st.booleans(), YAMLISH)),
        "defer": draw(mostly(st.booleans(), YAMLISH)),
        "source": draw(mostly(st.none(), YAMLISH)),
    }
    # The path is almost always there: without it nothing else gets looked at.
    keys = draw(st.sets(st.sampled_from(sorted(candidates))))
    keys |= draw(mostly(st.just({"path"}), st.just(set())))
    return {key: candidates[key] for key in keys}


COMMANDS = mostly(
    st.lists(
        mostly(
            st.text(max_size=20)
            | st.lists(
                mostly(st.text(max_size=8) | st.integers(), YAMLISH), min_size=1, max_size=4
            ),
            st.none() | YAMLISH,
        ),
        max_size=5,
    ),
    YAMLISH,
)

CLOUD_CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "write_files": mostly(st.lists(mostly(write_file_entry(), YAMLISH), max_size=4), YAMLISH),
        "runcmd": COMMANDS,
        "bootcmd": COMMANDS,
        "packages": YAMLISH,
    },
)


def check(data: bytes, format: str | None, as_script: bool = False) -> None:
    try:
        plan = parse_bootstrap(data, format, metadata=METADATA, commands_as_script=as_script)
    except BootstrapParseError as exc:
        assert isinstance(exc.key, str) and isinstance(exc.message, str)
        return
    assert isinstance(plan, BootstrapPlan)
    assert len(plan.digest) == 64
    assert all(isinstance(warning, str) for warning in plan.warnings)
    for step in plan.steps:
        assert len(step.digest) == 64
        step.describe()
        if isinstance(step, RunCommand):
            step.to_shell()


@FUZZ
@given(data=st.binary(max_size=200), format=st.sampled_from([None, "cloud-config", "ignition"]))
def test_arbitrary_bytes(data: bytes, format: str | None) -> None:
    check(data, format)


@FUZZ
@given(
    header=st.sampled_from(["#cloud-config\n", "## template: jinja\n#cloud-config\n"]),
    body=st.text(max_size=200),
)
def test_arbitrary_text_after_a_header(header: str, body: str) -> None:
    check((header + body).encode("utf-8", "surrogatepass"), None)


@FUZZ
@given(document=CLOUD_CONFIG | YAMLISH, as_script=st.booleans())
def test_yamlish_cloud_config(document: object, as_script: bool) -> None:
    check(("#cloud-config\n" + yaml.safe_dump(document)).encode(), "cloud-config", as_script)


DATA_URLS = st.binary(max_size=20).flatmap(
    lambda data: st.sampled_from(
        [
            "data:," + "".join(f"%{b:02x}" for b in data),
            "data:;base64," + base64.b64encode(data).decode(),
            "data:;base64," + base64.b64encode(gzip.compress(data)).decode(),
            "https://example.com/x",
            "data:",
        ]
    )
)


@st.composite
def ignition_file(draw: st.DrawFn) -> dict[str, Any]:
    resource = st.fixed_dictionaries(
        {},
        optional={
            "source": mostly(DATA_URLS, JSONISH),
            "compression": mostly(st.sampled_from(["", None]), st.just("gzip") | JSONISH),
            "verification": mostly(st.just({}), st.fixed_dictionaries({"hash": JSONISH}) | JSONISH),
        },
    )
    owner = mostly(
        st.fixed_dictionaries({"id": st.integers(0, 5000)})
        | st.fixed_dictionaries({"name": st.sampled_from(["core", "root"])}),
        st.fixed_dictionaries({}, optional={"id": JSONISH, "name": JSONISH}),
    )
    candidates = {
        "path": draw(mostly(PATHS, st.just("rel") | JSONISH)),
        "contents": draw(mostly(resource, JSONISH)),
        "append": draw(mostly(st.lists(resource, max_size=2) | st.booleans(), JSONISH)),
        "mode": draw(mostly(st.integers(0, 0o7777), st.integers() | JSONISH)),
        "user": draw(mostly(owner, JSONISH)),
        "group": draw(mostly(owner, JSONISH)),
        "filesystem": draw(mostly(st.just("root"), st.just("oem") | JSONISH)),
    }
    # The path is almost always there: without it nothing else gets looked at.
    keys = draw(st.sets(st.sampled_from(sorted(candidates))))
    keys |= draw(mostly(st.just({"path"}), st.just(set())))
    return {key: candidates[key] for key in keys}


UNIT = st.fixed_dictionaries(
    {
        "name": mostly(
            st.sampled_from(["a.service", "b.mount", "c@x.timer"]),
            st.sampled_from(["bad", "-x.service"]) | JSONISH,
        ),
    },
    optional={
        "enabled": mostly(st.booleans(), JSONISH),
        "enable": st.booleans(),
        "mask": mostly(st.booleans(), JSONISH),
        "contents": mostly(st.text(max_size=10), JSONISH),
        "dropins": mostly(
            st.lists(
                st.fixed_dictionaries(
                    {"name": mostly(st.just("a.conf"), JSONISH), "contents": st.text(max_size=5)}
                ),
                max_size=2,
            ),
            JSONISH,
        ),
    },
)

IGNITION = st.fixed_dictionaries(
    {
        "ignition": st.fixed_dictionaries(
            {"version": mostly(st.sampled_from(["3.4.0", "3.0.0", "2.3.0", "2.0.0"]), JSONISH)},
            optional={"config": mostly(st.just({}), JSONISH)},
        ),
        "storage": st.fixed_dictionaries(
            {
                "files": mostly(st.lists(ignition_file(), min_size=1, max_size=3), JSONISH),
                "directories": mostly(st.lists(ignition_file(), max_size=2), JSONISH),
            },
            optional={"links": JSONISH},
        ),
        "systemd": st.fixed_dictionaries(
            {"units": mostly(st.lists(UNIT, min_size=1, max_size=3), JSONISH)}
        ),
    },
    optional={"passwd": JSONISH},
)


@FUZZ
@given(document=IGNITION | JSONISH, as_script=st.booleans())
def test_jsonish_ignition(document: object, as_script: bool) -> None:
    check(json.dumps(document).encode(), "ignition", as_script)


def test_fuzz_strategies_reach_valid_plans() -> None:
    """Guards against strategies that only ever produce errors (and so test nothing).

    Derandomized: a count over random examples must not make the suite flaky.
    """
    step_counts: dict[str, list[int]] = {"ignition": [], "cloud-config": []}

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(ignition=IGNITION, cloud_config=CLOUD_CONFIG)
    def collect(ignition: object, cloud_config: object) -> None:
        for format, data in (
            ("ignition", json.dumps(ignition).encode()),
            ("cloud-config", ("#cloud-config\n" + yaml.safe_dump(cloud_config)).encode()),
        ):
            try:
                plan = parse_bootstrap(data, format, metadata=METADATA)
            except BootstrapParseError:
                continue
            step_counts[format].append(len(plan.steps))

    collect()
    for format, counts in step_counts.items():
        assert sum(count > 1 for count in counts) >= 5, (format, counts)
