"""Show the sample machines provisioning, live, until they are all Running (or time runs out)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError


def _rows(plane: ControlPlane, namespace: str) -> list[dict[str, str]]:
    raw = plane.kubectl("get", "machines,remotemachines", "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(raw)["items"]
    remote = {i["metadata"]["name"]: i for i in items if i["kind"] == "RemoteMachine"}
    rows = []
    for machine in (i for i in items if i["kind"] == "Machine"):
        name = machine["metadata"]["name"]
        infra_name = (machine["spec"].get("infrastructureRef") or {}).get("name", name)
        rm = remote.get(infra_name, {})
        ready: dict[str, Any] = next(
            (c for c in (rm.get("status") or {}).get("conditions", []) if c["type"] == "Ready"),
            {},
        )
        rows.append(
            {
                "machine": name,
                "phase": (machine.get("status") or {}).get("phase", ""),
                "host": rm.get("spec", {}).get("address", ""),
                "reason": ready.get("reason", ""),
                "message": ready.get("message", ""),
            }
        )
    return sorted(rows, key=lambda r: r["machine"])


def _table(rows: list[dict[str, str]], elapsed: float) -> Table:
    table = Table(title=f"Machines ({elapsed:.0f}s)", expand=False)
    for column in ("machine", "phase", "host", "reason", "message"):
        table.add_column(column)
    for row in rows:
        style = "green" if row["phase"] == "Running" else None
        table.add_row(
            *(row[c] for c in ("machine", "phase", "host", "reason", "message")), style=style
        )
    return table


def follow(
    plane: ControlPlane, namespace: str, expected: int, within: float, console: Console
) -> bool:
    """True once ``expected`` machines are Running; False if ``within`` seconds pass first."""
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            elapsed = time.monotonic() - started
            try:
                rows = _rows(plane, namespace)
            except (ControlPlaneError, ValueError, KeyError):
                rows = []
            live.update(_table(rows, elapsed))
            if sum(1 for r in rows if r["phase"] == "Running") >= expected:
                return True
            if elapsed > within:
                return False
            time.sleep(1.0)
