"""The one loader for tenant-written kubeconfigs (a workload cluster's ``<cluster>-kubeconfig``).

Why not kubernetes_asyncio's loader: it runs ``exec`` plugins and ``auth-provider``s, reads
``tokenFile``/``client-certificate``/``client-key``/``certificate-authority`` paths and honours
``proxy-url`` — so whoever may write that Secret could run commands in the controller or send its
service-account token (``tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token``) to a
server of their choice. It also writes embedded keys to temporary files.

Invariants:
- Accepted, and only from the selected context's cluster and user: an ``https`` ``server``,
  ``certificate-authority-data``, ``client-certificate-data`` + ``client-key-data``, ``token``.
  Every other key anywhere in the document (exec, auth-provider, tokenFile, file paths, proxy-url,
  insecure-skip-tls-verify, extensions, ...) is refused by name; so are YAML aliases and documents
  over ``MAX_KUBECONFIG_BYTES``.
- Nothing is read from or written to the file system: PEM data reaches OpenSSL through anonymous
  memory files (``memfd``) that live exactly as long as the client's configuration.
- Errors (:class:`KubeconfigError`) name keys, never values.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
import weakref
from typing import Any

import attrs
import yaml

from capi_remote.kube.k8s_transport import ApiClient, Configuration

# CAPI writes about 6 KiB; a CA bundle with a few certificates stays far below this.
MAX_KUBECONFIG_BYTES = 256 << 10

_TOP_KEYS = frozenset(
    {"apiVersion", "kind", "clusters", "users", "contexts", "current-context", "preferences"}
)
_CLUSTER_KEYS = frozenset({"server", "certificate-authority-data"})
_USER_KEYS = frozenset({"client-certificate-data", "client-key-data", "token"})
_CONTEXT_KEYS = frozenset({"cluster", "user", "namespace"})
_NAMED = {"clusters": "cluster", "users": "user", "contexts": "context"}


class KubeconfigError(ValueError):
    """A kubeconfig the controller refuses to use; ``message`` says which key and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class WorkloadKubeconfig:
    """The inline subset of a kubeconfig we use (PEM bytes, never paths)."""

    server: str
    certificate_authority: bytes | None = attrs.field(default=None, repr=False)
    client_certificate: bytes | None = attrs.field(default=None, repr=False)
    client_key: bytes | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases: kubeconfigs never need them, bombs do."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise KubeconfigError("YAML aliases are not accepted in a kubeconfig")
        return super().compose_node(parent, index)


def parse_kubeconfig(data: bytes) -> WorkloadKubeconfig:
    """Validate ``data`` (YAML or JSON) and return what its current context selects."""
    if len(data) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"kubeconfig is larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        document = yaml.load(data, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise KubeconfigError("kubeconfig is not valid YAML") from None
    top = _mapping(document, "kubeconfig", _TOP_KEYS)
    if top.get("preferences"):
        raise KubeconfigError("kubeconfig key 'preferences' is not supported")
    sections = {plural: _named(top, plural) for plural in _NAMED}
    for plural, known in (
        ("clusters", _CLUSTER_KEYS),
        ("users", _USER_KEYS),
        ("contexts", _CONTEXT_KEYS),
    ):
        for index, body in enumerate(sections[plural].values()):
            _mapping(body, f"{plural}[{index}].{_NAMED[plural]}", known)
    current = top.get("current-context")
    if current is None and len(sections["contexts"]) == 1:
        current = next(iter(sections["contexts"]))
    if not isinstance(current, str) or current not in sections["contexts"]:
        raise KubeconfigError("kubeconfig has no usable current-context")
    context = sections["contexts"][current]
    cluster = sections["clusters"].get(str(context.get("cluster")))
    user = sections["users"].get(str(context.get("user")), {})
    if cluster is None:
        raise KubeconfigError("the current context names no cluster of the kubeconfig")
    token = user.get("token")
    if token is not None and (not isinstance(token, str) or not token.isprintable()):
        raise KubeconfigError("users[].user.token must be a printable string")
    config = WorkloadKubeconfig(
        server=_server(cluster.get("server")),
        certificate_authority=_pem(cluster, "certificate-authority-data"),
        client_certificate=_pem(user, "client-certificate-data"),
        client_key=_pem(user, "client-key-data"),
        token=token or None,
    )
    if (config.client_certificate is None) != (config.client_key is None):
        raise KubeconfigError("client-certificate-data and client-key-data go together")
    return config


def api_client(config: WorkloadKubeconfig) -> ApiClient:
    """An ApiClient for ``config``: TLS verified against its CA (or the system's), no proxy."""
    configuration = Configuration(host=config.server)
    configuration.proxy = None
    files = _MemoryFiles()
    # The files must outlive every ApiClient made from this configuration (or a copy of it).
    weakref.finalize(configuration, files.close)
    try:
        if config.certificate_authority is not None:
            configuration.ssl_ca_cert = files.add(config.certificate_authority)
        if config.client_certificate is not None and config.client_key is not None:
            configuration.cert_file = files.add(config.client_certificate)
            configuration.key_file = files.add(config.client_key)
        if config.token is not None:
            configuration.api_key = {"BearerToken": f"Bearer {config.token}"}
        return ApiClient(configuration)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        files.close()
        raise KubeconfigError(
            f"kubeconfig certificate data is not usable ({type(error).__name__})"
        ) from None


class _MemoryFiles:
    """PEM data as ``/proc/self/fd/N`` paths of anonymous memory files (OpenSSL wants paths)."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def add(self, data: bytes) -> str:
        fd = os.memfd_create("capi-remote-kubeconfig", os.MFD_CLOEXEC)
        self._fds.append(fd)
        os.write(fd, data)
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


def _mapping(value: object, where: str, known: frozenset[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KubeconfigError(f"{where} must be a mapping")
    for key in value:
        if key not in known:
            shown = key if isinstance(key, str) and key.isprintable() else "?"
            raise KubeconfigError(f"{where} key {shown[:64]!r} is not accepted")
    return value


def _named(top: dict[str, Any], plural: str) -> dict[str, dict[str, Any]]:
    """``clusters``/``users``/``contexts``: a list of ``{name, <singular>}``, names unique."""
    singular = _NAMED[plural]
    entries = top.get(plural) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"kubeconfig key {plural!r} must be a list")
    result: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        item = _mapping(entry, f"{plural}[{i}]", frozenset({"name", singular}))
        name = item.get("name")
        if not isinstance(name, str) or name in result:
            raise KubeconfigError(f"{plural}[{i}].name must be a unique string")
        body = item.get(singular)
        if body is not None and not isinstance(body, dict):
            raise KubeconfigError(f"{plural}[{i}].{singular} must be a mapping")
        result[name] = body or {}
    return result


def _server(value: object) -> str:
    if not isinstance(value, str):
        raise KubeconfigError("clusters[].cluster.server is required")
    url = urllib.parse.urlsplit(value)
    if url.scheme != "https" or not url.hostname or url.username or url.password:
        raise KubeconfigError("clusters[].cluster.server must be an https URL without userinfo")
    if url.query or url.fragment:
        raise KubeconfigError("clusters[].cluster.server must not have a query or fragment")
    return value.rstrip("/")


def _pem(section: dict[str, Any], key: str) -> bytes | None:
    value = section.get(key)
    if value is None:
        return None
    try:
        text = "".join(value.split()) if isinstance(value, str) else ""
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if b"-----BEGIN " not in data:
        raise KubeconfigError(f"{key} must be base64-encoded PEM")
    return data
