"""Parsing hostile bootstrap data in a child process that can really be stopped.

A thread cannot be stopped: a parse that outlives the reconcile timeout kept running, and each
retry started another. Here every parse runs in a child of a forkserver that has only the parser
modules loaded (a fork is cheap, and the child holds none of the controller's memory: no tokens),
under ``RLIMIT_AS`` and ``RLIMIT_CPU``, and is killed at its wall deadline or when the caller is
cancelled. At most ``workers`` parses run at once; others wait their turn, taken fairly across
tenants (``admission.FairAdmission``: a namespace's queue of bombs delays another's parse by at
most one running parse).

Invariants:
- :meth:`ParseSandbox.parse` returns a ``BootstrapPlan`` or raises ``BootstrapParseError``; a
  limit hit is one too, with the key ``(limits)`` and a message saying which limit.
- No child outlives the call that started it.
- The child's reply is not trusted (a child that a template escaped from could send anything):
  it is size-bounded, unpickled with only the plan and error classes allowed, and every step is
  rebuilt through its validators.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import multiprocessing.forkserver
import pickle
import resource
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import attrs

from capi_remote.bootstrap.admission import FairAdmission
from capi_remote.bootstrap.budget import MAX_BOOTSTRAP_BYTES, Budget
from capi_remote.bootstrap.errors import LIMITS, BootstrapParseError
from capi_remote.bootstrap.jinja import InstanceMetadata
from capi_remote.bootstrap.plan import BootstrapPlan, MakeDirectory, RunCommand, WriteFile

# "__main__" too: a child whose server has not loaded it would re-run it (spawn semantics).
_PRELOAD = ["__main__", "capi_remote.bootstrap", "capi_remote.bootstrap.sandbox"]


def _preload() -> list[str]:
    """What the forkserver imports once, so that no child imports it again.

    Every child re-runs the parent's main module as ``__mp_main__`` before it parses. The server
    can preload a main given as a file (``capi-remote run``), not one given as a module name
    (``python -m capi_remote.cli run``); then each child imported the controller's whole stack
    again, about a second of CPU per parse. Preloading that module by name leaves the child
    only the main module's own top level to run, its imports already done.
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if not name or name == "__main__" or name.endswith(".__main__"):
        return list(_PRELOAD)  # a file, or a package's __main__: the server handles those
    return [*_PRELOAD, name]


@attrs.frozen
class SandboxSettings:
    """Limits of one parse and how many run at once.

    ``memory_bytes`` is the child's address space, including the about 115 MiB it shares with
    the forkserver (the interpreter and the imported package): each running parse may add up to
    ``memory_bytes - 115 MiB`` to the controller container's memory, so ``workers`` times that
    plus the controller must fit its memory limit (512 MiB in the default Deployment).
    """

    workers: int = 2
    memory_bytes: int = 320 << 20
    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    max_bytes: int = MAX_BOOTSTRAP_BYTES


@attrs.frozen
class _Request:
    data: bytes = attrs.field(repr=False)
    format: str | None
    metadata: InstanceMetadata
    commands_as_script: bool


class ParseSandbox:
    """Bounded, stoppable ``parse_bootstrap``; one per controller process."""

    def __init__(self, settings: SandboxSettings = SandboxSettings()) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_preload())
        self._admission = FairAdmission(settings.workers)
        # The forkserver starts now, in the background, not at the first parse: its start (an
        # interpreter importing the parser and the main module, a second or more of wall time on
        # a busy machine) is not the first machine's to wait for. Idempotent and locked.
        threading.Thread(
            target=multiprocessing.forkserver.ensure_running, name="parse-forkserver", daemon=True
        ).start()

    async def parse(
        self,
        data: bytes,
        format: str | None,
        *,
        metadata: InstanceMetadata,
        commands_as_script: bool = False,
        tenant: str = "",
    ) -> BootstrapPlan:
        """``parse_bootstrap`` in a limited child process (waits for a free worker first).

        ``tenant`` (the namespace) is whose turn the parse takes: workers go round robin across
        tenants with waiting parses.
        """
        request = _Request(data, format, metadata, commands_as_script)
        async with self._admission.slot(tenant):
            return await self._run(request)

    async def _run(self, request: _Request) -> BootstrapPlan:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child, args=(sender, request, self.settings), daemon=True
        )
        try:
            await asyncio.to_thread(process.start)
            sender.close()
            async with asyncio.timeout(self.settings.wall_seconds):
                await _readable(receiver, process.sentinel)
                outcome = await asyncio.to_thread(_receive, receiver, self.settings.max_bytes)
        except TimeoutError:
            raise BootstrapParseError(
                LIMITS, f"parsing took longer than {self.settings.wall_seconds:g}s and was stopped"
            ) from None
        finally:
            # Kill first: a receive still running in its thread then ends with EOF.
            if process.pid is not None:
                if process.exitcode is None:
                    process.kill()
                await asyncio.to_thread(process.join)
                process.close()
            receiver.close()
            sender.close()
        if isinstance(outcome, BootstrapPlan):
            return outcome
        raise outcome


async def _readable(receiver: Connection, sentinel: int) -> None:
    """Wait until the child sent something or exited."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(receiver.fileno(), wake)
    loop.add_reader(sentinel, wake)
    try:
        await ready
    finally:
        loop.remove_reader(receiver.fileno())
        loop.remove_reader(sentinel)


_REPLY_CLASSES = {
    ("capi_remote.bootstrap.plan", cls.__name__): cls
    for cls in (BootstrapPlan, WriteFile, MakeDirectory, RunCommand)
} | {("capi_remote.bootstrap.errors", "BootstrapParseError"): BootstrapParseError}
_FORMATS = ("cloud-config", "ignition", "script")


class _ReplyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _REPLY_CLASSES[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError("not a parse result") from None


def _receive(receiver: Connection, max_bytes: int) -> BootstrapPlan | BootstrapParseError:
    try:
        reply = receiver.recv_bytes(2 * max_bytes + (1 << 20))
    except (EOFError, OSError):
        return BootstrapParseError(
            LIMITS, "parsing exceeded its memory or CPU limit and was stopped"
        )
    try:
        return _checked(_ReplyUnpickler(io.BytesIO(reply)).load())
    except Exception:  # whatever a hostile reply makes the unpickler or a validator raise
        return BootstrapParseError(LIMITS, "the parse process sent an invalid reply")


def _checked(outcome: object) -> BootstrapPlan | BootstrapParseError:
    """``outcome`` rebuilt through the constructors, so every validator runs again."""
    if isinstance(outcome, BootstrapParseError):
        return BootstrapParseError(str(outcome.key), str(outcome.message))
    if not isinstance(outcome, BootstrapPlan) or outcome.format not in _FORMATS:
        raise ValueError("not a parse result")
    steps = tuple(outcome.steps)
    if not all(isinstance(step, WriteFile | MakeDirectory | RunCommand) for step in steps):
        raise ValueError("not a step")
    return BootstrapPlan(
        steps=tuple(attrs.evolve(step) for step in steps),
        warnings=tuple(str(warning) for warning in outcome.warnings),
        format=outcome.format,
    )


def _child(sender: Connection, request: _Request, settings: SandboxSettings) -> None:
    """The parse process: limits first, then parse, then one message back."""
    from capi_remote.bootstrap import parse_bootstrap

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU dumps core: it would hold secrets
    resource.setrlimit(resource.RLIMIT_AS, (settings.memory_bytes, settings.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (settings.cpu_seconds, settings.cpu_seconds + 1))
    outcome: BootstrapPlan | BootstrapParseError
    try:
        outcome = parse_bootstrap(
            request.data,
            request.format,
            metadata=request.metadata,
            commands_as_script=request.commands_as_script,
            budget=Budget(settings.max_bytes),
        )
    except BootstrapParseError as error:
        outcome = error
    except MemoryError:
        outcome = BootstrapParseError(LIMITS, "parsing exceeded its memory limit and was stopped")
    sender.send_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
