"""N1: what ``make run``'s real cluster costs on this machine. ``dev up``'s environment with its
defaults (:class:`~capi_remote_testbed.environment.LocalEnvironment`, 1 control-plane host, 2
workers, 1 spare host): the time from start to every Node Ready, and the peak memory and CPU of
each node host (its cgroup subtree) next to each management process, as ``dev up`` prints them.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from capi_remote_testbed import environment
from capi_remote_testbed.budget import Usage, total


def _summary(usages: list[Usage]) -> dict[str, Any]:
    whole = total(usages, "total")
    return {
        "peak_mib": round(whole.peak_mib),
        "cpu_s": round(whole.cpu_seconds, 1),
        "each": {u.name: {"peak_mib": round(u.peak_mib), "cpu_s": round(u.cpu_seconds, 1)}
                 for u in usages},
    }  # fmt: skip


def run() -> dict[str, Any]:
    """Raises RealClusterError (with a diagnosis) when the cluster does not come up."""
    settings = environment.Settings(state_file=None)
    env = environment.LocalEnvironment(settings)
    started = time.monotonic()
    env.start(progress=lambda _: None)
    try:
        assert env.real is not None
        up = time.monotonic()
        nodes = env.real.wait_ready(lambda _: None)
        ready = time.monotonic()
        hosts, processes = env.usage()
        return {
            "settings": attrs.asdict(settings, value_serializer=lambda _i, _a, v: str(v)),
            "nodes": len(nodes),
            "environment_up_s": round(up - started, 1),
            "cluster_applied_to_ready_s": round(ready - env.real.applied_at, 1),
            "start_to_ready_s": round(ready - started, 1),
            "workload": _summary(hosts),
            "management": _summary(processes),
        }
    finally:
        env.stop()
