"""Cost of parsing bootstrap data in ParseSandbox children (prints JSON lines, not a test).

- the first parse (starts the forkserver and imports the parser once);
- per-parse time of a typical kubeadm join cloud-config (jinja header, a few files, runcmd), in
  the sandbox and in-process, and the difference: the sandbox's overhead;
- RSS of the forkserver and the peak RSS (VmHWM) of a parse child, for that document and for a
  template memory bomb that ends at the child's ``RLIMIT_AS``;
- the controller process's own RSS before and after the bombs.

Run: ``python -m tests.benchmarks.bench_parse_sandbox [--parses N]``. Needs nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing.forkserver
import threading
import time
from pathlib import Path

from capi_remote.bootstrap import (
    BootstrapParseError,
    InstanceMetadata,
    ParseSandbox,
    parse_bootstrap,
)

METADATA = InstanceMetadata(instance_id="uid", local_hostname="node-1", hostname="node-1")
TYPICAL = (
    b"""## template: jinja
#cloud-config
write_files:
- path: /etc/kubernetes/pki/ca.crt
  permissions: '0640'
  content: |
"""
    + b"".join(b"    " + b"A" * 64 + b"\n" for _ in range(25))
    + b"""
- path: /run/kubeadm/kubeadm-join-config.yaml
  content: |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: JoinConfiguration
    nodeRegistration:
      name: '{{ ds.meta_data.local_hostname }}'
    discovery:
      bootstrapToken:
        apiServerEndpoint: 10.0.0.1:6443
        token: abcdef.0123456789abcdef
- path: /run/cluster-api/placeholder
  content: "This placeholder file is used to create the /run/cluster-api sub directory"
runcmd:
- kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml
- mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete
"""
)
MEMORY_BOMB = (
    b'## template: jinja\n#cloud-config\n{% set s = "x" * 1000000 %}{{ ([s] * 5000)|string }}\n'
)


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def forkserver_pid() -> int:
    return int(multiprocessing.forkserver._forkserver._forkserver_pid)  # type: ignore[attr-defined]


class PeakChildRss:
    """Samples the forkserver's children's VmHWM while a parse runs."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                server = forkserver_pid()
                for task in Path(f"/proc/{server}/task").iterdir():
                    for child in (task / "children").read_text().split():
                        self.peak_kib = max(self.peak_kib, rss_kib(child, "VmHWM"))
            except (OSError, ValueError, TypeError):
                pass
            time.sleep(0.001)

    def __enter__(self) -> PeakChildRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def main(parses: int) -> None:
    sandbox = ParseSandbox()
    start = time.perf_counter()
    await sandbox.parse(TYPICAL, None, metadata=METADATA)
    print(json.dumps({"metric": "first_parse_s", "value": round(time.perf_counter() - start, 3)}))
    print(
        json.dumps(
            {"metric": "forkserver_rss_mib", "value": round(rss_kib(forkserver_pid()) / 1024, 1)}
        )
    )

    start = time.perf_counter()
    with PeakChildRss() as peak:
        for _ in range(parses):
            await sandbox.parse(TYPICAL, None, metadata=METADATA)
    sandboxed = (time.perf_counter() - start) / parses
    start = time.perf_counter()
    for _ in range(parses):
        parse_bootstrap(TYPICAL, None, metadata=METADATA)
    direct = (time.perf_counter() - start) / parses
    for metric, value in (
        ("parse_sandboxed_ms", sandboxed * 1000),
        ("parse_in_process_ms", direct * 1000),
        ("sandbox_overhead_ms", (sandboxed - direct) * 1000),
        ("parse_child_peak_rss_mib", peak.peak_kib / 1024),
    ):
        print(json.dumps({"metric": metric, "value": round(value, 2)}))

    before = rss_kib()
    with PeakChildRss() as peak:
        try:
            await sandbox.parse(MEMORY_BOMB, None, metadata=METADATA)
        except BootstrapParseError as error:
            print(json.dumps({"metric": "memory_bomb_error", "value": str(error)}))
    print(
        json.dumps(
            {"metric": "memory_bomb_child_peak_rss_mib", "value": round(peak.peak_kib / 1024, 1)}
        )
    )
    print(
        json.dumps(
            {"metric": "controller_rss_growth_mib", "value": round((rss_kib() - before) / 1024, 1)}
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--parses", type=int, default=50)
    asyncio.run(main(parser.parse_args().parses))
