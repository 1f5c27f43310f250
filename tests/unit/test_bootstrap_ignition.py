"""Ignition parsing: files, directories, units, data URLs, compression, refusals."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import urllib.parse
from typing import Any

import pytest

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    MakeDirectory,
    RunCommand,
    WriteFile,
    parse_bootstrap,
)

METADATA = InstanceMetadata(instance_id="uid", local_hostname="node", hostname="node")
PAYLOAD = b"#!/bin/bash\nset -e\necho 'hi' \"$HOME\" 100%\n\x00\xff"


def parse(config: dict[str, Any], version: str = "3.4.0") -> BootstrapPlan:
    document = {"ignition": {"version": version}, **config}
    return parse_bootstrap(json.dumps(document).encode(), "ignition", metadata=METADATA)


def files(*entries: dict[str, Any], version: str = "3.4.0") -> tuple[Any, ...]:
    return parse({"storage": {"files": list(entries)}}, version).steps


def error(config: dict[str, Any], version: str = "3.4.0") -> BootstrapParseError:
    with pytest.raises(BootstrapParseError) as info:
        parse(config, version)
    return info.value


def percent(data: bytes) -> str:
    return "data:," + urllib.parse.quote_from_bytes(data)


def b64(data: bytes, mediatype: str = "") -> str:
    return f"data:{mediatype};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "contents",
    [
        {"source": percent(PAYLOAD)},
        {"source": b64(PAYLOAD)},
        {"source": b64(PAYLOAD, "text/plain;charset=utf-8")},
        {"source": b64(PAYLOAD, "application/octet-stream")},
        {"source": b64(gzip.compress(PAYLOAD)), "compression": "gzip"},
        {"source": percent(gzip.compress(PAYLOAD)), "compression": "gzip"},
        {"source": "DATA:;BASE64," + base64.b64encode(PAYLOAD).decode()},
        {
            "source": b64(gzip.compress(PAYLOAD)),
            "compression": "gzip",
            "verification": {"hash": "sha512-" + hashlib.sha512(PAYLOAD).hexdigest()},
        },
        {
            "source": percent(PAYLOAD),
            "compression": "",
            "verification": {"hash": "sha256-" + hashlib.sha256(PAYLOAD).hexdigest().upper()},
        },
    ],
)
def test_data_urls_and_compression(contents: dict[str, Any]) -> None:
    (step,) = files({"path": "/opt/bin/run.sh", "mode": 0o755, "contents": contents})
    assert step == WriteFile(path="/opt/bin/run.sh", content=PAYLOAD, mode=0o755)


def test_butane_style_percent_encoding() -> None:
    (step,) = files({"path": "/etc/a", "contents": {"source": "data:,hello%20world%0A%2B+"}})
    assert step.content == b"hello world\n++"


def test_defaults_and_owner_by_name_or_id() -> None:
    steps = files(
        {"path": "/etc/a", "contents": {"source": "data:,a"}},
        {"path": "/etc/b", "contents": {"source": "data:,b"}, "user": {"name": "core"}},
        {"path": "/etc/c", "contents": {"source": "data:,c"}, "group": {"id": 1000}},
        {
            "path": "/etc/d",
            "contents": {"source": "data:,d"},
            "user": {"id": 0},
            "group": {"name": "wheel"},
        },
        {"path": "/etc/e", "contents": {"source": "data:,e"}, "user": {}, "group": {}},
    )
    assert [(s.mode, s.owner, s.append) for s in steps] == [
        (0o644, None, False),
        (0o644, "core:0", False),
        (0o644, "0:1000", False),
        (0o644, "0:wheel", False),
        (0o644, None, False),
    ]


def test_v3_append_semantics() -> None:
    with_contents, append_only, bare = files(
        {
            "path": "/etc/a",
            "contents": {"source": "data:,head%0A"},
            "append": [
                {"source": "data:,one%0A"},
                {"source": b64(gzip.compress(b"two\n")), "compression": "gzip"},
            ],
        },
        {"path": "/etc/b", "append": [{"source": "data:,more%0A"}]},
        {"path": "/etc/c", "mode": 0o600},
    )
    assert (with_contents.content, with_contents.append) == (b"head\none\ntwo\n", False)
    assert (append_only.content, append_only.append) == (b"more\n", True)
    # No source at all: create the file if missing, keep existing data, apply the mode.
    assert (bare.content, bare.append, bare.mode) == (b"", True, 0o600)


def test_directories_parents_first() -> None:
    plan = parse(
        {
            "storage": {
                "directories": [
                    {"path": "/var/lib/app/data", "mode": 0o700, "user": {"name": "app"}},
                    {"path": "/var/lib/app"},
                ],
                "files": [{"path": "/var/lib/app/data/x", "contents": {"source": "data:,x"}}],
            }
        }
    )
    assert plan.steps[:2] == (
        MakeDirectory(path="/var/lib/app"),
        MakeDirectory(path="/var/lib/app/data", mode=0o700, owner="app:0"),
    )
    assert isinstance(plan.steps[2], WriteFile)


def test_units_are_written_reloaded_enabled_and_started_in_one_transaction() -> None:
    plan = parse(
        {
            "storage": {
                "files": [
                    {
                        "path": "/etc/kubeadm.sh",
                        "mode": 0o700,
                        "contents": {"source": "data:,kubeadm"},
                    }
                ]
            },
            "systemd": {
                "units": [
                    {
                        "name": "kubeadm.service",
                        "enabled": True,
                        "contents": (
                            "[Unit]\nConditionPathExists=/etc/kubeadm.yml\n"
                            "[Service]\nType=oneshot\nExecStart=/etc/kubeadm.sh\n"
                            "[Install]\nWantedBy=multi-user.target\n"
                        ),
                    },
                    {
                        "name": "containerd.service",
                        "dropins": [
                            {
                                "name": "10-opts.conf",
                                "contents": "[Service]\nLimitNOFILE=1048576\n",
                            },
                            {"name": "20-empty.conf"},
                        ],
                    },
                    {"name": "ntpd.service", "enabled": True},
                    {"name": "update-engine.service", "enabled": False},
                    {"name": "locksmithd.service", "mask": True, "contents": "ignored"},
                    {"name": "docker.socket", "mask": False},
                    {
                        "name": "var-lib.mount",
                        "enabled": True,
                        "contents": "[Mount]\nWhat=/dev/sdb\n",
                    },
                ]
            },
        }
    )
    assert [s.path for s in plan.steps if isinstance(s, WriteFile)] == [
        "/etc/kubeadm.sh",
        "/etc/systemd/system/kubeadm.service",
        "/etc/systemd/system/containerd.service.d/10-opts.conf",
        "/etc/systemd/system/var-lib.mount",
    ]
    commands = [s.argv for s in plan.steps if isinstance(s, RunCommand)]
    assert commands == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "kubeadm.service"),
        ("systemctl", "enable", "ntpd.service"),
        ("systemctl", "disable", "update-engine.service"),
        ("systemctl", "mask", "locksmithd.service"),
        ("systemctl", "unmask", "docker.socket"),
        ("systemctl", "enable", "var-lib.mount"),
        ("systemctl", "start", "kubeadm.service", "ntpd.service", "var-lib.mount"),
    ]
    assert plan.warnings == ("systemd.units[4]: contents not written because the unit is masked",)
    assert all(isinstance(s, RunCommand) for s in plan.steps[-8:])


def test_masked_and_enabled_is_masked() -> None:
    plan = parse({"systemd": {"units": [{"name": "a.service", "mask": True, "enabled": True}]}})
    assert [s.argv for s in plan.steps] == [  # type: ignore[union-attr]
        ("systemctl", "daemon-reload"),
        ("systemctl", "mask", "a.service"),
    ]
    assert plan.warnings == ("systemd.units[0]: not enabled because the unit is masked",)


def test_units_without_changes_produce_no_commands() -> None:
    assert parse({"systemd": {"units": [{"name": "a.service"}]}}).steps == ()


@pytest.mark.parametrize(
    ("unit", "key"),
    [
        ({"name": "noext"}, "systemd.units[0].name"),
        ({"name": "../../etc/passwd.service"}, "systemd.units[0].name"),
        ({"name": "-x.service"}, "systemd.units[0].name"),
        ({"name": ".service"}, "systemd.units[0].name"),
        ({"name": "a.service", "enabled": "yes"}, "systemd.units[0].enabled"),
        ({"name": "a.service", "contents": 5}, "systemd.units[0].contents"),
        (
            {"name": "a.service", "dropins": [{"name": "x.txt", "contents": "x"}]},
            "systemd.units[0].dropins[0].name",
        ),
        ({"name": "a.service", "dropins": {"name": "x.conf"}}, "systemd.units[0].dropins"),
    ],
)
def test_bad_units(unit: dict[str, Any], key: str) -> None:
    assert error({"systemd": {"units": [unit]}}).key == key


@pytest.mark.parametrize("scheme", ["http", "https", "s3", "tftp", "gs", "arn", "HTTPS"])
def test_remote_sources_are_refused_without_echoing_the_url(scheme: str) -> None:
    url = f"{scheme}://user:SECRETPASSWORD@example.com/file?X-Amz-Signature=SECRETSIG"
    for config in (
        {"storage": {"files": [{"path": "/a", "contents": {"source": url}}]}},
        {"storage": {"files": [{"path": "/a", "append": [{"source": url}]}]}},
    ):
        failure = error(config)
        assert failure.key.endswith(".source")
        assert "never fetched" in failure.message
        assert "SECRET" not in str(failure)


def test_referenced_configs_are_refused() -> None:
    for name, value in [
        ("merge", [{"source": "https://x/y.ign"}]),
        ("replace", {"source": "data:,{}"}),
    ]:
        document = {"ignition": {"version": "3.4.0", "config": {name: value}}}
        with pytest.raises(BootstrapParseError) as info:
            parse_bootstrap(json.dumps(document).encode(), "ignition", metadata=METADATA)
        assert info.value.key == f"ignition.config.{name}"


def test_go_marshalled_empty_sections_are_silent() -> None:
    # What json.Marshal of Ignition's Go types produces around a CAPI (Butane) config.
    document = {
        "ignition": {
            "config": {"replace": {"verification": {}}},
            "proxy": {},
            "security": {"tls": {}},
            "timeouts": {},
            "version": "3.4.0",
        },
        "kernelArguments": {},
        "passwd": {},
        "storage": {
            "files": [
                {
                    "path": "/etc/a",
                    "contents": {"source": "data:,x", "verification": {}},
                    "user": {},
                    "group": {},
                }
            ]
        },
        "systemd": {},
    }
    plan = parse_bootstrap(json.dumps(document).encode(), "ignition", metadata=METADATA)
    assert plan.warnings == ()
    assert plan.steps == (WriteFile(path="/etc/a", content=b"x"),)


def test_unsupported_sections_and_keys_are_warnings() -> None:
    plan = parse(
        {
            "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA"]}]},
            "kernelArguments": {"shouldExist": ["quiet"]},
            "storage": {
                "links": [{"path": "/a", "target": "/b"}],
                "filesystems": [{"device": "/dev/sdb", "format": "ext4"}],
                "files": [
                    {
                        "path": "/etc/a",
                        "contents": {"source": "data:,x", "httpHeaders": []},
                        "surprise": 1,
                    }
                ],
            },
            "systemd": {"units": [], "other": 1},
            "future": {"x": 1},
        }
    )
    assert plan.warnings == (
        "Ignition key 'future' is not supported and was ignored",
        "Ignition section passwd is not supported and was ignored",
        "Ignition section kernelArguments is not supported and was ignored",
        "Ignition section storage.links is not supported and was ignored",
        "Ignition section storage.filesystems is not supported and was ignored",
        "Ignition key storage.files[0].'surprise' is not supported and was ignored",
        "Ignition key systemd.'other' is not supported and was ignored",
    )


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"storage": {"files": [{"path": "rel"}]}}, "storage.files[0].path"),
        ({"storage": {"files": [{"path": "/a/../b"}]}}, "storage.files[0].path"),
        ({"storage": {"files": [{}]}}, "storage.files[0].path"),
        ({"storage": {"files": [{"path": "/a"}, {"path": "//a"}]}}, "storage.files[1].path"),
        (
            {"storage": {"directories": [{"path": "/a"}], "files": [{"path": "/a"}]}},
            "storage.files[0].path",
        ),
        ({"storage": {"files": [{"path": "/a", "mode": "0644"}]}}, "storage.files[0].mode"),
        ({"storage": {"files": [{"path": "/a", "mode": 420.0}]}}, "storage.files[0].mode"),
        ({"storage": {"files": [{"path": "/a", "mode": 99999}]}}, "storage.files[0].mode"),
        (
            {"storage": {"files": [{"path": "/a", "user": {"id": 1, "name": "x"}}]}},
            "storage.files[0].user",
        ),
        ({"storage": {"files": [{"path": "/a", "user": {"id": -1}}]}}, "storage.files[0].user.id"),
        (
            {"storage": {"files": [{"path": "/a", "user": {"name": "bad name"}}]}},
            "storage.files[0]",
        ),
        (
            {"storage": {"files": [{"path": "/a", "contents": {"source": "data:;base64,%%%"}}]}},
            "storage.files[0].contents.source",
        ),
        (
            {"storage": {"files": [{"path": "/a", "contents": {"source": "data:text/plain"}}]}},
            "storage.files[0].contents.source",
        ),
        (
            {"storage": {"files": [{"path": "/a", "contents": {"source": "/etc/passwd"}}]}},
            "storage.files[0].contents.source",
        ),
        (
            {"storage": {"files": [{"path": "/a", "contents": {"source": "file:///etc/passwd"}}]}},
            "storage.files[0].contents.source",
        ),
        (
            {
                "storage": {
                    "files": [
                        {"path": "/a", "contents": {"source": "data:,x", "compression": "gzip"}}
                    ]
                }
            },
            "storage.files[0].contents.source",
        ),
        (
            {
                "storage": {
                    "files": [
                        {"path": "/a", "contents": {"source": "data:,x", "compression": "xz"}}
                    ]
                }
            },
            "storage.files[0].contents.compression",
        ),
        (
            {
                "storage": {
                    "files": [
                        {
                            "path": "/a",
                            "contents": {"source": "data:,x", "verification": {"hash": "md5-abc"}},
                        }
                    ]
                }
            },
            "storage.files[0].contents.verification.hash",
        ),
        (
            {
                "storage": {
                    "files": [
                        {
                            "path": "/a",
                            "contents": {
                                "source": "data:,x",
                                "verification": {"hash": "sha256-" + "0" * 64},
                            },
                        }
                    ]
                }
            },
            "storage.files[0].contents.verification.hash",
        ),
        (
            {"storage": {"files": [{"path": "/a", "filesystem": "oem"}]}},
            "storage.files[0].filesystem",
        ),
        ({"storage": {"files": {"path": "/a"}}}, "storage.files"),
        ({"storage": []}, "storage"),
    ],
)
def test_malformed_configs_name_the_key(config: dict[str, Any], key: str) -> None:
    assert error(config).key == key


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"", "(document)"),
        (b"{", "(document)"),
        (b"[]", "(document)"),
        (b"\xff\xfe\x00", "(document)"),
        (b"[" * 100000, "(document)"),
        (b"{}", "ignition"),
        (b'{"ignition": {}}', "ignition.version"),
        (b'{"ignition": {"version": "3.5.0"}}', "ignition.version"),
        (b'{"ignition": {"version": "3.5.0-experimental"}}', "ignition.version"),
        (b'{"ignition": {"version": "1.0.0"}}', "ignition.version"),
        (b'{"ignition": {"version": 3}}', "ignition.version"),
    ],
)
def test_document_errors(data: bytes, key: str) -> None:
    with pytest.raises(BootstrapParseError) as info:
        parse_bootstrap(data, "ignition", metadata=METADATA)
    assert info.value.key == key


@pytest.mark.parametrize("version", ["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0"])
def test_every_v3_version(version: str) -> None:
    (step,) = files({"path": "/a", "contents": {"source": "data:,x"}}, version=version)
    assert step.content == b"x"


def test_v2_container_linux_config_output() -> None:
    # The shape CAPI's legacy (Container Linux Config) Ignition output has: spec 2.3.0.
    plan = parse(
        {
            "storage": {
                "files": [
                    {
                        "filesystem": "root",
                        "path": "/etc/kubeadm.sh",
                        "mode": 448,
                        "contents": {
                            "source": percent(b"#!/bin/bash\nkubeadm join\n"),
                            "verification": {},
                        },
                    },
                    {
                        "filesystem": "root",
                        "path": "/etc/motd",
                        "append": True,
                        "contents": {"source": "data:,hello"},
                    },
                ],
                "directories": [{"filesystem": "root", "path": "/etc/kubernetes", "mode": 493}],
            },
            "systemd": {
                "units": [{"name": "kubeadm.service", "enable": True, "contents": "[Unit]\n"}]
            },
            "networkd": {"units": [{"name": "00-eth0.network", "contents": "[Match]\n"}]},
        },
        version="2.3.0",
    )
    directory, script, motd, unit, *commands = plan.steps
    assert isinstance(script, WriteFile) and isinstance(motd, WriteFile)
    assert isinstance(unit, WriteFile)
    assert all(isinstance(c, RunCommand) for c in commands)
    assert directory == MakeDirectory(path="/etc/kubernetes", mode=0o755)
    assert (script.path, script.mode, script.append) == ("/etc/kubeadm.sh", 0o700, False)
    assert (motd.content, motd.append) == (b"hello", True)
    assert unit.path == "/etc/systemd/system/kubeadm.service"
    assert [c.argv for c in commands] == [  # type: ignore[union-attr]
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "kubeadm.service"),
        ("systemctl", "start", "kubeadm.service"),
    ]
    assert plan.warnings == ("Ignition section networkd is not supported and was ignored",)


def test_v2_append_flag_must_be_boolean_and_v3_append_a_list() -> None:
    assert error({"storage": {"files": [{"path": "/a", "append": [1]}]}}, "2.3.0").key == (
        "storage.files[0].append"
    )
    assert error({"storage": {"files": [{"path": "/a", "append": True}]}}).key == (
        "storage.files[0].append"
    )


def test_digest_changes_with_unit_contents() -> None:
    def plan(contents: str) -> BootstrapPlan:
        return parse(
            {"systemd": {"units": [{"name": "a.service", "enabled": True, "contents": contents}]}}
        )

    assert plan("[Unit]\n").digest == plan("[Unit]\n").digest
    assert plan("[Unit]\n").digest != plan("[Unit]\nAfter=x\n").digest
