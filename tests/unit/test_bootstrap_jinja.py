"""`## template: jinja` cloud-config: cloud-init's variables, strictness, the sandbox."""

from __future__ import annotations

import textwrap

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
    instance_id="6f1c2d7e-4c57-4c1b-9b0e-0f8c7e1d2a3b",
    local_hostname="worker-0",
    hostname="worker-0.cluster.example",
    local_ipv4="10.250.0.12",
    platform="capi-remote",
)

# Shaped like the kubeadm bootstrap provider's join data.
KUBEADM_JOIN = textwrap.dedent(
    """\
    ## template: jinja
    #cloud-config

    write_files:
    -   path: /etc/kubernetes/pki/ca.crt
        owner: root:root
        permissions: '0640'
        content: |
          -----BEGIN CERTIFICATE-----
          MIIC6jCCAdKgAwIBAgIBADANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDEwprdWJl
          -----END CERTIFICATE-----
    -   path: /run/kubeadm/kubeadm-join-config.yaml
        owner: root:root
        permissions: '0640'
        content: |
          ---
          apiVersion: kubeadm.k8s.io/v1beta3
          discovery:
            bootstrapToken:
              apiServerEndpoint: 10.250.0.2:6443
              caCertHashes:
              - sha256:45d4c05f6b2a8b2b8b1f64d3ab7ed3e6e5a5d6b1c6c1ad4b0f2b6b8c7e8f9a0b
              token: abcdef.0123456789abcdef
          kind: JoinConfiguration
          nodeRegistration:
            kubeletExtraArgs:
              provider-id: PROVIDER_ID
            name: '{{ ds.meta_data.local_hostname }}'
    -   path: /run/cluster-api/placeholder
        owner: root:root
        permissions: '0640'
        content: "This placeholder file is used to create the /run/cluster-api sub directory"
    runcmd:
      - 'kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && echo success > \
/run/cluster-api/bootstrap-success.complete'
    """
)


def render(template_body: str, metadata: InstanceMetadata = METADATA) -> BootstrapPlan:
    data = "## template: jinja\n#cloud-config\n" + textwrap.dedent(template_body)
    return parse_bootstrap(data.encode(), "cloud-config", metadata=metadata)


def test_kubeadm_join_data_renders() -> None:
    data = substitute_provider_id(KUBEADM_JOIN.encode(), "remote-machine://10.250.0.12:22")
    plan = parse_bootstrap(data, None, metadata=METADATA)
    ca, join_config, placeholder, join = plan.steps
    assert isinstance(join_config, WriteFile)
    config = yaml.safe_load(join_config.content)
    assert config["nodeRegistration"]["name"] == "worker-0"
    assert config["nodeRegistration"]["kubeletExtraArgs"]["provider-id"] == (
        "remote-machine://10.250.0.12:22"
    )
    assert config["discovery"]["bootstrapToken"]["token"] == "abcdef.0123456789abcdef"
    assert (join_config.mode, join_config.owner) == (0o640, "root:root")
    assert [s.path for s in (ca, placeholder)] == [  # type: ignore[union-attr]
        "/etc/kubernetes/pki/ca.crt",
        "/run/cluster-api/placeholder",
    ]
    assert join == RunCommand(
        shell="kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && echo success > "
        "/run/cluster-api/bootstrap-success.complete"
    )
    assert plan.warnings == ()
    assert plan.format == "cloud-config"


def variables(expression: str, metadata: InstanceMetadata = METADATA) -> str:
    plan = render(f"write_files:\n- path: /out\n  content: '{expression}'\n", metadata)
    return plan.steps[0].content.decode()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("{{ ds.meta_data.local_hostname }}", "worker-0"),
        ("{{ ds.meta_data['local-hostname'] }}", "worker-0"),
        ("{{ ds.meta_data.instance_id }}", METADATA.instance_id),
        ("{{ ds.meta_data['instance-id'] }}", METADATA.instance_id),
        ("{{ ds.meta_data.hostname }}", "worker-0.cluster.example"),
        ("{{ ds.meta_data.local_ipv4 }}", "10.250.0.12"),
        ("{{ ds.meta_data['local-ipv4'] }}", "10.250.0.12"),
        ("{{ ds.meta_data.platform }}", "capi-remote"),
        ("{{ v1.instance_id }}", METADATA.instance_id),
        ("{{ v1.local_hostname }}", "worker-0"),
        ("{{ v1.platform }}", "capi-remote"),
        ("{{ instance_id }}", METADATA.instance_id),
        ("{{ local_hostname }}", "worker-0"),
        ("{{ local_hostname | upper }}", "WORKER-0"),
        ('{% if v1.platform == "capi-remote" %}yes{% endif %}', "yes"),
    ],
)
def test_cloud_init_variables(expression: str, value: str) -> None:
    assert variables(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ds.meta_data.region }}",
        "{{ v1.availability_zone }}",
        "{{ merged_cfg }}",
        "{{ nothing }}",
    ],
)
def test_undefined_variables_are_errors(expression: str) -> None:
    with pytest.raises(BootstrapParseError) as info:
        variables(expression)
    assert info.value.key == "(template)"
    assert "undefined" in info.value.message


def test_missing_local_ipv4_is_undefined_not_empty() -> None:
    metadata = InstanceMetadata(instance_id="i", local_hostname="h", hostname="h")
    with pytest.raises(BootstrapParseError):
        variables("{{ ds.meta_data.local_ipv4 }}", metadata)


def test_trim_blocks_and_trailing_newline_like_cloud_init() -> None:
    plan = render(
        """\
        runcmd:
        {% for n in [1, 2] %}
        - echo {{ n }}
        {% endfor %}
        write_files:
        - path: /x
          content: |
            last line
        """
    )
    assert [s.shell for s in plan.steps if isinstance(s, RunCommand)] == ["echo 1", "echo 2"]
    assert plan.steps[0].content == b"last line\n"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "header",
    ["## template: jinja", "##template:jinja", "## Template: Jinja  ", "  ## template: jinja"],
)
def test_header_spellings(header: str) -> None:
    data = f"{header}\n#cloud-config\nruncmd: ['echo {{{{ v1.local_hostname }}}}']\n".encode()
    plan = parse_bootstrap(data, None, metadata=METADATA)
    assert plan.steps == (RunCommand(shell="echo worker-0"),)


def test_rendered_data_must_be_cloud_config() -> None:
    with pytest.raises(BootstrapParseError) as info:
        parse_bootstrap(b"## template: jinja\n#!/bin/sh\necho hi\n", None, metadata=METADATA)
    assert info.value.key == "(header)"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{{ foo( }}", "syntax error at line 3"),
        ("\n\n{% if %}", "syntax error at line 5"),
        ("{{ ''.__class__.__mro__ }}", "sandbox"),
        ("{{ 2 ** 100000 }}", "sandbox"),
        ("{{ 'x' * 100000000 }}", "sandbox"),
        ("{{ [1] * 100000000 }}", "sandbox"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% for i in range(10**9) %}{% endfor %}", "range() items"),
    ],
)
def test_template_errors(body: str, fragment: str) -> None:
    with pytest.raises(BootstrapParseError) as info:
        render(body)
    assert info.value.key == "(template)"
    assert fragment in info.value.message


def test_template_errors_do_not_echo_the_template() -> None:
    with pytest.raises(BootstrapParseError) as info:
        render("token: SECRETTOKEN {{ SECRETTOKEN2 + }}")
    assert "SECRETTOKEN" not in str(info.value)


def test_metadata_refuses_control_characters() -> None:
    # A newline in a hostname would be YAML injected into the rendered document.
    with pytest.raises(ValueError, match="local_hostname"):
        InstanceMetadata(instance_id="i", local_hostname="h\nruncmd: [reboot]", hostname="h")
    with pytest.raises(ValueError, match="local_ipv4"):
        InstanceMetadata(instance_id="i", local_hostname="h", hostname="h", local_ipv4="1\n")


def test_without_header_braces_are_literal() -> None:
    plan = parse_bootstrap(
        b"#cloud-config\nruncmd: ['echo {{ not a template }}']\n", None, metadata=METADATA
    )
    assert plan.steps == (RunCommand(shell="echo {{ not a template }}"),)
