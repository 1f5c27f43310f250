"""The benchmark report: runs the benchmark functions of this package and writes
``build/bench/report.json`` and ``build/bench/report.md`` with the machine, the numbers, the
targets and pass/fail per target. A missed target is reported, never an error (exit code 0).

Run as root (the SSH benchmark uses namespaced hosts): ``make bench``, or
``python -m tests.benchmarks.report [--quick] [--ssh-sizes 50 200] [--objects 10000]``.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from capi_remote.devenv import toolchain
from capi_remote.devenv.controlplane import ControlPlane, Settings
from capi_remote.devenv.provider import install_crds
from capi_remote.kube.client import KubeClient
from capi_remote.ssh import SSHSettings
from tests.benchmarks import bench_informer, bench_reconcile, bench_ssh

OUT = Path("build/bench")


def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    try:
        from importlib.metadata import version

        ours = version("capi-remote")
    except Exception:
        ours = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "memory_gib": round(total_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_1m": round(os.getloadavg()[0], 2),
        "capi_remote": ours,
        "kubernetes": toolchain.KUBERNETES_VERSION,
        "etcd": toolchain.ETCD_VERSION,
        "cluster_api": toolchain.CLUSTER_API_VERSION,
    }


def check(
    id_: str,
    what: str,
    value: float | None,
    unit: str,
    target: str,
    ok: Callable[[float], bool] | None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One report row; ``value`` None means not measured."""
    if value is None:
        status = "not measured"
    elif ok is None:
        status = "info"
    else:
        status = "pass" if ok(value) else "miss"
    return {
        "id": id_,
        "what": what,
        "value": value,
        "unit": unit,
        "target": target,
        "status": status,
        "detail": detail or {},
    }


def run_ssh(sizes: Sequence[int], samples: int) -> list[dict[str, Any]]:
    rows = []
    settings = SSHSettings()
    for size in sizes:
        result = bench_ssh.measure_fleet(size, samples, settings)
        rows.append(
            check(
                "P1",
                f"SSH trivial bootstrap, {size} hosts: wall time over the CPU bound",
                result["wall_over_bound"],
                "x",
                "<= 1.10 (within 10 % of N x CPU per job / cores)",
                lambda v: v <= 1.10,
                result,
            )
        )
    return rows


async def run_reconcile(keys: int, latency_keys: int) -> list[dict[str, Any]]:
    throughput = await bench_reconcile.measure_throughput(keys, 16)
    latency = await bench_reconcile.measure_latency(latency_keys, 16, 2_000.0)
    return [
        check(
            "P3",
            f"no-op reconciles, {keys} keys, 16 workers",
            throughput["keys_per_second"],
            "keys/s",
            ">= 5000",
            lambda v: v >= 5000,
            throughput,
        ),
        check(
            "P3",
            "add -> reconcile-start latency p99 at 2,000 adds/s",
            latency["p99_ms"],
            "ms",
            "(informational)",
            None,
            latency,
        ),
    ]


async def run_informer(objects: int, latency_objects: int) -> list[dict[str, Any]]:
    plane = ControlPlane(toolchain.ensure(log=lambda _: None), Settings(cluster_api=False))
    plane.start()
    try:
        install_crds(plane, webhook_port=1)  # storage version only: no conversion is called
        plane.kubectl("create", "namespace", bench_informer.NAMESPACE)
        client = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
        try:
            create_s = await bench_informer.create_objects(client, objects)
            sync = await bench_informer.measure_cache_sync(client)
            latency = await bench_informer.measure_event_latency(
                client, min(latency_objects, objects)
            )
        finally:
            await client.close()
    finally:
        plane.stop()
    sync["create_objects_per_s"] = round(objects / create_s)
    full = objects >= 10_000
    scale_note = "" if full else f" (measured with {objects}; the target is for 10,000)"
    return [
        check(
            "P4",
            f"informer cache sync of {objects} RemoteMachines{scale_note}",
            sync["cache_sync_seconds"],
            "s",
            "< 5 s for 10,000",
            (lambda v: v < 5) if full else None,
            sync,
        ),
        check(
            "P6",
            f"RSS growth with {objects} RemoteMachines cached{scale_note}",
            sync["rss_growth_mb"],
            "MB",
            "<= 250 MB for 10,000",
            (lambda v: v <= 250) if full else None,
            sync,
        ),
        check(
            "P4",
            "event -> reconcile-start latency p99 (real API server)",
            latency["latency_p99_ms"],
            "ms",
            "< 50 ms",
            lambda v: v < 50,
            latency,
        ),
    ]


NOT_MEASURED = [
    check("P2", "end-to-end provisioning of many Machines (CAPI + SSH)", None, "", "-", None),
    check("P5", "API writes per provisioned machine (apiserver audit log)", None, "", "-", None),
]


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    lines = [
        "# Benchmark report",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| id | what | value | target | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["results"]:
        value = "-" if row["value"] is None else f"{row['value']} {row['unit']}".strip()
        lines.append(
            f"| {row['id']} | {row['what']} | {value} | {row['target']} | {row['status']} |"
        )
    lines += ["", f"Took {report['seconds']} s. Details per row: report.json.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.report")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--ssh-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--objects", type=int, default=None, help="RemoteMachines for P4/P6")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ssh_sizes = args.ssh_sizes or ([10] if args.quick else [50, 200])
    objects = args.objects or (1_000 if args.quick else 10_000)
    keys = 10_000 if args.quick else 100_000
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    started = time.monotonic()
    machine = machine_info()  # before the runs: the load is other work on the box
    results: list[dict[str, Any]] = []
    if os.geteuid() == 0:
        results += run_ssh(ssh_sizes, samples=5)
    else:
        results.append(check("P1", "SSH benchmark (needs root)", None, "", "-", None))
    results += asyncio.run(run_reconcile(keys, keys // 10))
    results += asyncio.run(run_informer(objects, 1_000))
    results += NOT_MEASURED
    report = {
        "machine": {**machine, "load_1m_after": round(os.getloadavg()[0], 2)},
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
