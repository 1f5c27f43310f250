"""Templating applied to bootstrap data before parsing.

cloud-init renders user data whose first line is ``## template: jinja`` with its instance data
(the kubeadm bootstrap provider relies on ``{{ ds.meta_data.local_hostname }}``). We render the
same variables from ``InstanceMetadata`` with a sandboxed Jinja environment configured like
cloud-init's (``trim_blocks``, the ``do`` extension, trailing newline kept) except that undefined
variables are errors instead of ``CI_MISSING_JINJA_VAR/...`` strings.

``substitute_provider_id`` is the Tinkerbell-style alternative: a literal ``PROVIDER_ID`` in the
data becomes the machine's providerID.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from capi_remote.bootstrap.errors import TEMPLATE, BootstrapParseError

JINJA_HEADER = re.compile(r"##\s*template:\s*jinja\s*", re.IGNORECASE)
PROVIDER_ID_PLACEHOLDER = b"PROVIDER_ID"

# Guards against templates that would stall a controller worker: 9**9**9, "x" * 10**12.
_MAX_EXPONENT = 4096
_MAX_REPEAT = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A URI scheme, then characters that are plain in YAML and JSON strings (IPv6 brackets allowed).
_PROVIDER_ID = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:/@%+=\[\]-]*")


def _no_control(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # A newline in a hostname would be YAML injected into the rendered cloud-config.
    if value is not None and (not isinstance(value, str) or _CONTROL.search(value)):
        raise ValueError(f"{attribute.name} must be a string without control characters")


@attrs.frozen
class InstanceMetadata:
    """What the host is, as cloud-init's instance data would describe it to templates."""

    instance_id: str = attrs.field(validator=_no_control)
    local_hostname: str = attrs.field(validator=_no_control)
    hostname: str = attrs.field(validator=_no_control)
    local_ipv4: str | None = attrs.field(default=None, validator=_no_control)
    platform: str = attrs.field(default="capi-remote", validator=_no_control)

    def template_variables(self) -> dict[str, Any]:
        """cloud-init's jinja variables for this instance.

        ``ds.meta_data`` holds the datasource keys in both spellings cloud-init exposes
        (``local-hostname`` and its alias ``local_hostname``); ``v1`` the standardised keys we
        can fill, which cloud-init also copies to the top level. ``local_ipv4`` is absent, not
        empty, when unknown, so a template using it fails loudly.
        """
        meta_data: dict[str, str] = {
            "instance-id": self.instance_id,
            "instance_id": self.instance_id,
            "local-hostname": self.local_hostname,
            "local_hostname": self.local_hostname,
            "hostname": self.hostname,
            "platform": self.platform,
        }
        if self.local_ipv4 is not None:
            meta_data["local-ipv4"] = self.local_ipv4
            meta_data["local_ipv4"] = self.local_ipv4
        v1 = {
            "instance_id": self.instance_id,
            "local_hostname": self.local_hostname,
            "platform": self.platform,
        }
        return {"ds": {"meta_data": meta_data}, "v1": v1, **v1}


class _BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError("exponent too large")
        if operator == "*":
            for count, other in ((left, right), (right, left)):
                sequence = isinstance(other, str | bytes | list | tuple)
                if sequence and isinstance(count, int) and count * len(other) > _MAX_REPEAT:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def render_jinja(template: str, metadata: InstanceMetadata) -> str:
    """Render ``template`` (the data after the ``## template: jinja`` line).

    Errors report the template line and the kind of failure, never template text.
    """
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do"],
        autoescape=False,
    )
    try:
        return env.from_string(template).render(metadata.template_variables())
    except jinja2.TemplateSyntaxError as exc:
        # exc.message can quote the offending token; the line number is enough to find it.
        raise BootstrapParseError(
            TEMPLATE, f"jinja syntax error at line {exc.lineno + 1}"
        ) from None
    except jinja2.UndefinedError as exc:
        raise BootstrapParseError(TEMPLATE, f"undefined template variable: {exc.message}") from None
    except SecurityError as exc:
        raise BootstrapParseError(TEMPLATE, f"template refused by the sandbox: {exc}") from None
    except Exception as exc:  # any runtime error of a template is a data error here
        raise BootstrapParseError(
            TEMPLATE, f"template rendering failed ({type(exc).__name__})"
        ) from None


def substitute_provider_id(data: bytes, provider_id: str) -> bytes:
    """Replace every literal ``PROVIDER_ID`` in ``data`` with ``provider_id``.

    A plain byte replacement done before any parsing (as Tinkerbell's provider does), so it also
    applies inside templates but not inside base64- or gzip-encoded file contents. The
    providerID is restricted to URI characters so it cannot break YAML or JSON around it.
    """
    if not _PROVIDER_ID.fullmatch(provider_id):
        raise BootstrapParseError(
            "providerID", "providerID must be a URI (scheme:rest) of plain characters"
        )
    return data.replace(PROVIDER_ID_PLACEHOLDER, provider_id.encode("ascii"))
