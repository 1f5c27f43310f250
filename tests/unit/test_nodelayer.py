"""A node host's own CNI configuration: a bridge with the host's own Pod subnet (so the routes
between hosts can reach each Pod), and no IP masquerading (the hosts have no iptables)."""

from __future__ import annotations

import json
from pathlib import Path

from capi_remote_testbed.hosts.nodelayer import pod_subnet, write_host_files


def test_each_host_gets_its_own_pod_subnet(tmp_path: Path) -> None:
    subnets = []
    for index in (0, 1, 7):
        upper = tmp_path / f"host-{index}"
        write_host_files(upper, index, "10.250.9.1")
        conflist = json.loads((upper / "etc/cni/net.d/10-capi-node.conflist").read_text())
        bridge = next(p for p in conflist["plugins"] if p["type"] == "bridge")
        assert bridge["ipMasq"] is False
        (ranges,) = bridge["ipam"]["ranges"]
        subnets.append(ranges[0]["subnet"])
        assert ranges[0]["subnet"] == pod_subnet(index)
        # CoreDNS (forward . /etc/resolv.conf) does not start without a nameserver.
        assert (upper / "etc/resolv.conf").read_text() == "nameserver 10.250.9.1\n"
    assert subnets == ["10.244.0.0/24", "10.244.1.0/24", "10.244.7.0/24"]
