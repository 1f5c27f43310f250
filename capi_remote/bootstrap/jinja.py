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

import functools
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import _PassArg

from capi_remote.bootstrap.budget import Budget
from capi_remote.bootstrap.errors import TEMPLATE, BootstrapParseError

JINJA_HEADER = re.compile(r"##\s*template:\s*jinja\s*", re.IGNORECASE)
PROVIDER_ID_PLACEHOLDER = b"PROVIDER_ID"

# Guards against templates that would stall or exhaust the parser: 9**9**9, "x" * 10**12,
# "x"|center(10**10), doubling a string in a loop, "%099999999d" padding, nested range loops.
_MAX_EXPONENT = 4096
_MAX_LENGTH = 1 << 20
_MAX_ITERATIONS = 100_000
#: Seconds one render may take (checked at every operation; the parse process has a hard limit).
TIME_LIMIT = 5.0
_SIZED = (str, bytes, list, tuple)
# Functions (filters, str methods, globals) whose result can be far larger than their input.
# Those whose integer arguments are sizes (a width, a count) are _SIZED_BY_ARGUMENT.
_SIZED_BY_ARGUMENT = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "batch", "slice"}
)
_AMPLIFIERS = _SIZED_BY_ARGUMENT | {"indent", "wordwrap", "replace", "join", "format"}
# printf widths/precisions from arguments (*) or of 7+ digits; str.format specs likewise.
_PADDING = re.compile(
    r"%[-#0 +]*(?:\*|\d{7,})|%[-#0 +]*\d*\.(?:\*|\d{7,})|\{[^{}]*:[^{}]*(?:\{|\d{7,})"
)
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


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` into a size-checked concatenation (jinja's own is not interceptable)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(SandboxedEnvironment):
    """A sandbox whose templates cannot build huge values, loop without end or run long.

    Every operator, call, attribute access, concatenation and output chunk checks the render's
    deadline; values (strings, lists) a template builds stay under ``_MAX_LENGTH``; ``range``
    calls of one render share ``_MAX_ITERATIONS``. Anything these checks miss (a join of many
    references to one large string) is stopped by the parse process's memory and time limits.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, time_limit: float) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            keep_trailing_newline=True,
            extensions=["jinja2.ext.do"],
            autoescape=False,
        )
        self.deadline = time.monotonic() + time_limit
        self.iterations_left = _MAX_ITERATIONS
        self.globals["range"] = self.bounded_range
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs; cloud-init has no use for it
        for name in _AMPLIFIERS & self.filters.keys():
            self.filters[name] = self._guarded_filter(name, self.filters[name])

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError("template exceeded its time limit")

    def bounded_range(self, *args: int) -> range:
        self.check_time()
        result = range(*args)
        self.iterations_left -= len(result)
        if self.iterations_left < 0:
            raise SecurityError(f"template loops exceed {_MAX_ITERATIONS} range() items")
        return result

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        self.check_time()
        parts = [str(value) for value in values]
        _check_length(sum(map(len, parts)), "concatenation")
        return "".join(parts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.check_time()
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError("exponent too large")
        if operator == "*":
            for count, other in ((left, right), (right, left)):
                if isinstance(other, _SIZED) and isinstance(count, int):
                    _check_length(count * len(other), "repetition")
        if operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            _check_length(len(left) + len(right), "concatenation")
        if operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.check_time()
        name = getattr(__obj, "__name__", "")
        if name in _AMPLIFIERS:
            wrapped = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            _check_arguments(name, getattr(wrapped, "__self__", None), args, kwargs)
        result = SandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        for value in (result, getattr(__obj, "__self__", None)):  # list.extend grows its list
            if isinstance(value, (*_SIZED, dict, set)):
                _check_length(len(value), "value")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.check_time()
        return super().getitem(obj, argument)

    def _guarded_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if _PassArg.from_obj(function) is not None else 0  # context/environment first

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.check_time()
            value = args[skip] if len(args) > skip else None
            _check_arguments(name, value, args[skip + 1 :], kwargs)
            return function(*args, **kwargs)

        return guarded


def _check_length(length: int, what: str) -> None:
    if length > _MAX_LENGTH:
        raise SecurityError(f"{what} too large (over {_MAX_LENGTH} items)")


def _check_format(text: str) -> None:
    if _PADDING.search(text):
        raise SecurityError("format width or precision too large")


def _check_arguments(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse calls of amplifying functions whose result would exceed ``_MAX_LENGTH``."""
    if name == "format" and isinstance(value, str):
        _check_format(value)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = value.count(old) if old else len(value) + 1
        _check_length(len(value) + hits * max(0, len(new) - len(old)), "replace result")
    elif name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        prefix = len(width) if isinstance(width, str) else width
        if isinstance(prefix, int):
            _check_length(len(value) + (value.count("\n") + 1) * prefix, "indent result")
    elif name == "wordwrap" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        if isinstance(width, int) and isinstance(wrap, str):
            breaks = len(value) // max(width, 1) + 1
            _check_length(len(value) + breaks * len(wrap), "wordwrap result")
    elif name == "join" and isinstance(value, list | tuple):
        parts = [len(item) for item in value if isinstance(item, str)]
        separator = args[0] if args and isinstance(args[0], str) else ""
        _check_length(sum(parts) + len(separator) * len(value), "join result")
    elif name in _SIZED_BY_ARGUMENT:
        for argument in (*args, *kwargs.values()):
            if isinstance(argument, int) and abs(argument) > _MAX_LENGTH:
                raise SecurityError(f"{name} argument too large")


def render_jinja(template: str, metadata: InstanceMetadata, budget: Budget | None = None) -> str:
    """Render ``template`` (the data after the ``## template: jinja`` line).

    The output is charged to ``budget`` as it is produced. Errors report the template line and
    the kind of failure, never template text.
    """
    budget = budget or Budget()
    env = _BoundedSandbox(TIME_LIMIT)
    try:
        chunks = []
        for chunk in env.from_string(template).generate(metadata.template_variables()):
            env.check_time()
            budget.charge(len(chunk), TEMPLATE)
            chunks.append(chunk)
        return "".join(chunks)
    except (BootstrapParseError, MemoryError):  # MemoryError: the sandbox's limit, reported there
        raise
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
