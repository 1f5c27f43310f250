"""cloud-config parsing: write_files, runcmd, bootcmd, warnings, errors, commands-as-script."""

from __future__ import annotations

import base64
import gzip
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    RunCommand,
    WriteFile,
    parse_bootstrap,
    substitute_provider_id,
)

METADATA = InstanceMetadata(
    instance_id="0b6f2a1e-uid", local_hostname="node-a", hostname="node-a.example.com"
)
PAYLOAD = b"\x00\x01binary\xff payload\n"


def parse(text: str, *, as_script: bool = False) -> BootstrapPlan:
    return parse_bootstrap(
        textwrap.dedent(text).encode(), None, metadata=METADATA, commands_as_script=as_script
    )


def parse_doc(document: object, *, as_script: bool = False) -> BootstrapPlan:
    text = "#cloud-config\n" + yaml.safe_dump(document)
    return parse_bootstrap(
        text.encode(), "cloud-config", metadata=METADATA, commands_as_script=as_script
    )


def one_file(entry: dict[str, object]) -> WriteFile:
    plan = parse_doc({"write_files": [{"path": "/etc/f", **entry}]})
    (step,) = plan.steps
    assert isinstance(step, WriteFile)
    return step


def error(text_or_doc: str | object) -> BootstrapParseError:
    with pytest.raises(BootstrapParseError) as info:
        if isinstance(text_or_doc, str):
            parse(text_or_doc)
        else:
            parse_doc(text_or_doc)
    return info.value


B64 = base64.b64encode(PAYLOAD).decode()
GZ_B64 = base64.b64encode(gzip.compress(PAYLOAD)).decode()


@pytest.mark.parametrize(
    ("encoding", "content"),
    [
        ("b64", B64),
        ("base64", B64),
        ("BASE64", B64),
        ("gz+b64", GZ_B64),
        ("gzip+base64", GZ_B64),
        ("gz+base64", GZ_B64),
        ("gzip+b64", GZ_B64),
        (" gzip+base64 ", GZ_B64),
        ("gz", gzip.compress(PAYLOAD)),  # safe_dump writes bytes as !!binary
        ("gzip", gzip.compress(PAYLOAD)),
        ("text/plain", PAYLOAD),
        (None, PAYLOAD),
    ],
)
def test_every_encoding_round_trips(encoding: str | None, content: object) -> None:
    entry = {"content": content} if encoding is None else {"encoding": encoding, "content": content}
    assert one_file(entry).content == PAYLOAD


def test_base64_may_be_line_wrapped_and_gzip_multi_member() -> None:
    wrapped = "\n".join(B64[i : i + 8] for i in range(0, len(B64), 8))
    assert one_file({"encoding": "b64", "content": wrapped}).content == PAYLOAD
    two_members = base64.b64encode(gzip.compress(b"ab") + gzip.compress(b"cd")).decode()
    assert one_file({"encoding": "gz+b64", "content": two_members}).content == b"abcd"


def test_text_content_is_utf8_and_missing_content_is_empty() -> None:
    assert one_file({"content": "grüß\n"}).content == "grüß\n".encode()
    assert one_file({}).content == b""
    assert one_file({"content": None}).content == b""


@pytest.mark.parametrize(
    ("encoding", "content", "message"),
    [
        ("b64", "not base64!!", "base64"),
        ("b64", "QU=JD", "base64"),  # padding in the middle
        ("b64", "QUJDRA", "base64"),  # missing padding
        ("gz+b64", B64, "gzip"),  # valid base64, not gzip
        ("gzip", b"\x1f\x8b\x08\x00trunc", "gzip"),
        ("gzip", "text is not gzip", "gzip"),
        ("rot13", "x", "unsupported encoding"),
    ],
)
def test_bad_encodings_are_typed_errors(encoding: str, content: object, message: str) -> None:
    failure = error(
        {"write_files": [{"path": "/a"}, {"path": "/b", "encoding": encoding, "content": content}]}
    )
    assert failure.key in ("write_files[1].content", "write_files[1].encoding")
    assert message in failure.message


def test_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capi_remote.bootstrap.cloudconfig.MAX_FILE_BYTES", 1000)
    bomb = base64.b64encode(gzip.compress(b"\0" * 5000)).decode()
    failure = error({"write_files": [{"path": "/a", "encoding": "gz+b64", "content": bomb}]})
    assert "exceeds" in failure.message


@pytest.mark.parametrize(
    ("permissions", "mode"),
    [
        ("0644", 0o644),
        ("0o600", 0o600),
        ("0O600", 0o600),
        ("755", 0o755),
        ("04755", 0o4755),
        (" 0640 ", 0o640),
        (0o640, 0o640),
        (420, 0o644),
        (None, 0o644),
    ],
)
def test_permission_forms(permissions: object, mode: int) -> None:
    assert one_file({"permissions": permissions}).mode == mode


def test_unquoted_yaml_octal_is_an_int_like_cloud_init_reads_it() -> None:
    plan = parse(
        """\
        #cloud-config
        write_files:
        - path: /a
          permissions: 0600
        """
    )
    assert plan.steps[0].mode == 0o600  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "permissions", ["rw-r--r--", "0x1a4", "0989", "", "017777", 1 << 20, -1, True, 6.44, [1]]
)
def test_bad_permissions(permissions: object) -> None:
    assert error({"write_files": [{"path": "/a", "permissions": permissions}]}).key == (
        "write_files[0].permissions"
    )


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("root:root", "root:root"),
        ("core", "core"),
        ("1000:1000", "1000:1000"),
        (" nginx : nginx ", "nginx:nginx"),
        ("root:", "root"),
        (":docker", ":docker"),
        ("none:none", None),
        ("-1:-1", None),
        ("", None),
        (None, None),
    ],
)
def test_owner_forms(owner: str | None, expected: str | None) -> None:
    assert one_file({"owner": owner}).owner == expected


@pytest.mark.parametrize("owner", ["root root", "a:b:c", "-rf", "$(id)", 0])
def test_bad_owner(owner: object) -> None:
    assert error({"write_files": [{"path": "/a", "owner": owner}]}).key == "write_files[0].owner"


def test_append_and_defer_flags() -> None:
    step = one_file({"append": True, "defer": True})
    assert (step.append, step.deferred) == (True, True)
    step = one_file({"append": False})
    assert (step.append, step.deferred) == (False, False)
    for flag in ("append", "defer"):
        failure = error({"write_files": [{"path": "/a", flag: "yes"}]})
        assert failure.key == f"write_files[0].{flag}"


def test_paths_are_normalised_and_checked() -> None:
    assert one_file({"path": "//etc/./kubernetes//admin.conf"}).path == "/etc/kubernetes/admin.conf"
    for path, key in [
        ("etc/x", "write_files[0].path"),
        ("/etc/../x", "write_files[0].path"),
        (None, "write_files[0].path"),
        (5, "write_files[0].path"),
    ]:
        assert error({"write_files": [{"path": path}]}).key == key


def test_order_is_bootcmd_files_deferred_files_runcmd() -> None:
    plan = parse(
        """\
        #cloud-config
        runcmd:
        - echo run
        write_files:
        - {path: /deferred1, defer: true}
        - {path: /now1}
        - {path: /deferred2, defer: true}
        - {path: /now2}
        bootcmd:
        - echo boot
        """
    )
    described = [
        step.path if isinstance(step, WriteFile) else (step.phase, step.shell)  # type: ignore[union-attr]
        for step in plan.steps
    ]
    assert described == [
        ("bootcmd", "echo boot"),
        "/now1",
        "/now2",
        "/deferred1",
        "/deferred2",
        ("runcmd", "echo run"),
    ]


def test_runcmd_strings_lists_and_nulls() -> None:
    plan = parse_doc(
        {"runcmd": ["echo 'a b' | tr a b", ["kubeadm", "join", "--v", 5], None, "", ["x"]]}
    )
    assert plan.steps == (
        RunCommand(shell="echo 'a b' | tr a b"),
        RunCommand(argv=("kubeadm", "join", "--v", "5")),
        RunCommand(shell=""),
        RunCommand(argv=("x",)),
    )


def test_bootcmd_gets_instance_id_like_cloud_init() -> None:
    plan = parse_doc({"bootcmd": ["echo $INSTANCE_ID", ["mkdir", "-p", "/x"]]})
    assert [s.phase for s in plan.steps] == ["bootcmd", "bootcmd"]  # type: ignore[union-attr]
    assert all(s.env == (("INSTANCE_ID", METADATA.instance_id),) for s in plan.steps)  # type: ignore[union-attr]
    result = subprocess.run(["sh", "-c", plan.steps[0].to_shell()], capture_output=True, check=True)  # type: ignore[union-attr]
    assert result.stdout == f"{METADATA.instance_id}\n".encode()


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"runcmd": "echo hi"}, "runcmd"),
        ({"runcmd": [5]}, "runcmd[0]"),
        ({"runcmd": ["ok", {"a": 1}]}, "runcmd[1]"),
        ({"runcmd": [[]]}, "runcmd[0]"),
        ({"runcmd": [[""]]}, "runcmd[0]"),
        ({"runcmd": [["echo", None]]}, "runcmd[0][1]"),
        ({"runcmd": [["echo", True]]}, "runcmd[0][1]"),
        ({"runcmd": [["echo", ["nested"]]]}, "runcmd[0][1]"),
        ({"bootcmd": ["ok", "nul\x00byte"]}, "bootcmd[1]"),
        ({"write_files": {"path": "/a"}}, "write_files"),
        ({"write_files": ["/a"]}, "write_files[0]"),
        ({"write_files": [{"path": "/a", "content": 5}]}, "write_files[0].content"),
        (
            {"write_files": [{"path": "/a", "source": {"uri": "https://x"}}]},
            "write_files[0].source",
        ),
    ],
)
def test_malformed_documents_name_the_key(document: object, key: str) -> None:
    assert error(document).key == key


def test_document_level_errors() -> None:
    for data, key in [
        (b"\xff\xfe#cloud-config", "(document)"),
        (b"#!/bin/sh\necho hi\n", "(header)"),
        (b"runcmd: [ls]\n", "(header)"),
        (b"#cloud-config\n- a list\n", "(document)"),
        (b"#cloud-config\nruncmd: [unclosed\n", "(document)"),
        (b"#cloud-config\na: !!python/object:os.system x\n", "(document)"),
        (b"#cloud-config\na: 2001-13-45\n", "(document)"),
        (b"#cloud-config\na: " + b"[" * 5000 + b"\n", "(document)"),
    ]:
        with pytest.raises(BootstrapParseError) as info:
            parse_bootstrap(data, None, metadata=METADATA)
        assert info.value.key == key, data[:40]


def test_empty_cloud_config_is_an_empty_plan() -> None:
    for text in ("#cloud-config\n", "  \n#Cloud-Config\r\n---\n", "#cloud-config"):
        plan = parse_bootstrap(text.encode(), None, metadata=METADATA)
        assert plan.steps == () and plan.warnings == ()


def test_unknown_modules_and_keys_are_warnings() -> None:
    plan = parse_doc(
        {
            "packages": ["nginx"],
            "users": [{"name": "core"}],
            "ntp": {"enabled": True},
            "write_files": [{"path": "/a", "comment": "x"}],
            "runcmd": ["true"],
        }
    )
    assert plan.warnings == (
        "cloud-config module 'ntp' is not supported and was ignored",
        "cloud-config module 'packages' is not supported and was ignored",
        "cloud-config module 'users' is not supported and was ignored",
        "write_files[0]: key 'comment' is not supported and was ignored",
    )
    assert len(plan.steps) == 2


def test_errors_never_echo_secrets() -> None:
    secret = "SUPERSECRETTOKEN"
    documents = [
        f"#cloud-config\nwrite_files:\n- path: /a\n  encoding: b64\n  content: {secret}!!\n",
        f"#cloud-config\nwrite_files:\n- path: /a\n  encoding: gzip\n  content: {secret}\n",
        f"#cloud-config\nruncmd:\n- kubeadm join --token {secret}\n  bad: indent\n",
        f'#cloud-config\nruncmd: ["{secret}\\q"]\n',
        f"#cloud-config\nwrite_files:\n- path: /a\n  content: {{{secret}: [}}\n",
        f"#cloud-config\nruncmd: [[echo, {{a: {secret}}}]]\n",
    ]
    for text in documents:
        with pytest.raises(BootstrapParseError) as info:
            parse_bootstrap(text.encode(), None, metadata=METADATA)
        assert secret not in str(info.value), str(info.value)


def test_unsupported_format() -> None:
    with pytest.raises(BootstrapParseError) as info:
        parse_bootstrap(b"#cloud-config\n", "cloud-boothook", metadata=METADATA)
    assert info.value.key == "format"


# --- commands as script ---------------------------------------------------------------------


def run_sh(command: RunCommand, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", command.to_shell()], capture_output=True, cwd=cwd, check=False
    )


def test_commands_as_script_folds_each_phase_into_one_step(tmp_path: Path) -> None:
    plan = parse_doc(
        {
            "bootcmd": ["echo boot1", "echo boot2"],
            "write_files": [{"path": "/a"}, {"path": "/b", "defer": True}],
            "runcmd": ["mkdir sub && cd sub", ["touch", "it's here"], 'echo "$PWD" > where'],
        },
        as_script=True,
    )
    assert plan.format == "script"
    boot, file_a, file_b, run = plan.steps
    assert isinstance(boot, RunCommand) and boot.phase == "bootcmd"
    assert boot.shell == "set -e\necho boot1\necho boot2\n"
    assert boot.env == (("INSTANCE_ID", METADATA.instance_id),)
    assert (file_a.path, file_b.path) == ("/a", "/b")  # type: ignore[union-attr]
    assert isinstance(run, RunCommand) and run.phase == "runcmd"
    assert (
        run.shell
        == "set -e\nmkdir sub && cd sub\n'touch' 'it'\"'\"'s here'\necho \"$PWD\" > where\n"
    )
    # One shell: the cd carries over to the following entries.
    assert run_sh(run, tmp_path).returncode == 0
    assert (tmp_path / "sub" / "it's here").exists()
    assert (tmp_path / "sub" / "where").read_text() == f"{tmp_path / 'sub'}\n"


def test_commands_as_script_stops_at_the_first_failure(tmp_path: Path) -> None:
    plan = parse_doc({"runcmd": ["touch one", "false", "touch two"]}, as_script=True)
    (script,) = plan.steps
    assert run_sh(script, tmp_path).returncode != 0  # type: ignore[arg-type]
    assert (tmp_path / "one").exists() and not (tmp_path / "two").exists()


def test_commands_as_script_changes_the_plan_digest() -> None:
    document = {"runcmd": ["echo a", "echo b"]}
    assert parse_doc(document).digest != parse_doc(document, as_script=True).digest
    assert parse_doc({}, as_script=True).steps == ()


def test_commands_as_script_does_not_apply_to_ignition() -> None:
    data = b'{"ignition": {"version": "3.4.0"}}'
    plan = parse_bootstrap(data, "ignition", metadata=METADATA, commands_as_script=True)
    assert plan.format == "ignition"
    assert plan.warnings == ("commandsAsScript has no effect on Ignition data",)


# --- PROVIDER_ID ------------------------------------------------------------------------------


def test_provider_id_placeholder_is_substituted_before_parsing() -> None:
    data = textwrap.dedent(
        """\
        #cloud-config
        write_files:
        - path: /etc/kubelet-args
          content: "--provider-id=PROVIDER_ID"
        runcmd:
        - [kubelet, --provider-id, PROVIDER_ID]
        """
    ).encode()
    provider_id = "remote-machine://10.0.0.7:22"
    plan = parse_bootstrap(substitute_provider_id(data, provider_id), None, metadata=METADATA)
    assert plan.steps[0].content == f"--provider-id={provider_id}".encode()  # type: ignore[union-attr]
    assert plan.steps[1].argv == ("kubelet", "--provider-id", provider_id)  # type: ignore[union-attr]


def test_ipv6_provider_id_in_block_context() -> None:
    data = b"#cloud-config\nwrite_files:\n- path: /a\n  content: PROVIDER_ID\n"
    provider_id = "remote-machine://[fd00::1]:22"
    plan = parse_bootstrap(substitute_provider_id(data, provider_id), None, metadata=METADATA)
    assert plan.steps[0].content == provider_id.encode()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "provider_id",
    ["", "no-scheme", "remote-machine://a b", "x://a\nb", "x://a'b", 'x://a"b', "x://a,b"],
)
def test_bad_provider_ids_are_refused(provider_id: str) -> None:
    with pytest.raises(BootstrapParseError) as info:
        substitute_provider_id(b"PROVIDER_ID", provider_id)
    assert info.value.key == "providerID"
