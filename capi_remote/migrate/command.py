"""``capi-remote migrate``: gather, check, print the plan, then run the steps not done yet.

Exit codes: 0 done (or the dry run printed its plan), 1 a check or step failed, 3 a step waits
for the operator (start the controller, let pods stop): run the same command again to continue.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from capi_remote.kube.client import ApiError, KubeClient, TransportError
from capi_remote.kube.k8s_transport import ConfigException
from capi_remote.migrate import checks, plan, rollback, steps
from capi_remote.migrate.display import Progress, shown
from capi_remote.migrate.errors import MigrationError, WaitingForOperator
from capi_remote.migrate.hostkeys import Confirm
from capi_remote.migrate.inventory import gather
from capi_remote.migrate.options import Options
from capi_remote.migrate.record import RECORD_NAME, Record
from capi_remote.ssh.keyscan import ScannedKey

EXIT_WAITING = 3

Step = Callable[[steps.Context], Awaitable[None]]


async def _nothing(ctx: steps.Context) -> None:
    """The check step's findings are printed before any step runs."""


RUNNERS: dict[str, Step] = {
    "check": _nothing,
    "pause": steps.pause,
    "stop-reference": steps.stop_reference,
    "crds": steps.replace_crds,
    "host-keys": steps.host_keys,
    "controller": steps.controller,
    "unpause": steps.unpause,
    "report": steps.report,
    "stop-capi-remote": rollback.stop_capi_remote,
    "restore-crds": rollback.restore_crds,
    "start-reference": rollback.start_reference,
    "touch": rollback.touch,
}


async def ask_on_terminal(key: ScannedKey) -> bool:
    """Show a host's key and read the operator's answer from stdin (no answer: not trusted)."""
    print(
        f"host {shown(key.address)}:{key.port} presents {shown(key.key_type)} {key.fingerprint}"
        " - trust it? [y/N] ",
        end="",
        flush=True,
    )
    answer = await asyncio.to_thread(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


async def run(
    options: Options,
    kubeconfig: str | None,
    progress: Progress | None = None,
    confirm: Confirm = ask_on_terminal,
) -> int:
    progress = progress or Progress()
    try:
        kube = await KubeClient.from_kubeconfig(kubeconfig)
    except (ConfigException, OSError, ValueError) as error:
        progress.line("error", "check", f"cannot load the kubeconfig: {shown(error)}")
        return 1
    try:
        return await _run(kube, options, progress, confirm)
    except MigrationError as error:
        progress.line("error", "migrate", shown(error, 1000))
        return 1
    except WaitingForOperator as error:
        progress.line("wait", "migrate", shown(error, 1000))
        return EXIT_WAITING
    except (ApiError, TransportError) as error:
        progress.line(
            "error", "migrate", f"API server: {shown(error, 1000)}; run again to continue"
        )
        return 1
    finally:
        await kube.close()


async def _run(kube: KubeClient, options: Options, progress: Progress, confirm: Confirm) -> int:
    record = await Record.load(kube, options.record_namespace)
    inventory = await gather(kube)
    findings = checks.versions(inventory) if options.rollback else checks.run(inventory, options)
    planned = plan.make(inventory, options, record.state)
    for finding in findings:
        progress.line(finding.level, f"check/{finding.topic}", shown(finding.message, 1000))
    where = f"{options.record_namespace}/{RECORD_NAME}"
    progress.text(f"plan ({'rollback' if options.rollback else 'migration'}; record {where}):")
    for number, step in enumerate(planned, 1):
        state = "done" if step.done else "todo"
        progress.line("plan", step.name, f"[{state}] {number}. {step.summary}")
        for detail in step.details:
            progress.text(f"        {detail}")
    errors = checks.blocking(findings)
    if options.dry_run:
        return 1 if errors else 0
    started = any(s.done for s in planned)
    if errors and not started:
        raise MigrationError(f"{len(errors)} check(s) failed: nothing was changed")
    record.begin("rollback" if options.rollback else "migrate")
    context = steps.Context(kube, inventory, options, record, progress, confirm)
    for step in planned:
        if step.done:
            progress.line("skip", step.name, "done before")
            continue
        progress.line("start", step.name, step.summary)
        await RUNNERS[step.name](context)
        if step.name not in plan.ALWAYS:
            await record.mark_done(step.name)
        progress.line("done", step.name)
    return 0
