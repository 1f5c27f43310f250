"""A fleet of namespaced sshd "machines" on this box, for tests that need real SSH targets.

Each host is a network namespace wired into a bridge the fleet owns, plus mount/UTS/PID namespaces
whose root is an overlay over one cached Debian rootfs (see :mod:`capi_remote_testbed.rootfs`).
Hosts are cheap (~2 MB each, 50 start in a few seconds), isolated from each other and from the real
machine, and can be broken on purpose (sshd down, link down, connections refused, new host key, a
slow/lossy proxy in front) so the SSH runner can be tested against the failures real fleets have.

Invariants:

- Everything a fleet creates carries the ``crt<k>`` marker (``k`` = its slot, also the third octet
  of its subnet 10.250.<k>.0/24), and each slot is owned through an ``flock`` held for the fleet's
  life, so :func:`sweep` can tell a crashed run's leftovers from a live fleet in another process.
- A host's PID 1 reads commands from a pipe the harness holds: when the harness dies, the host
  exits and the kernel kills all its processes, so no host outlives the process that made it.

One concept per module: ``names`` (what a fleet owns and where its state lives), ``system``
(commands and processes), ``keys``, ``layers`` (the files a host boots from), ``host`` (one host
and its fault knobs), ``fleet``, ``slots`` (locks, leftovers, destruction), ``leftovers``
(sweeping crashed runs), ``__main__`` (``python -m capi_remote_testbed.hosts cleanup``); for hosts
that can be Kubernetes nodes (``HostFleet(nodes=True)``): ``nodelayer`` (the prepared machine's
files), ``cgroups`` (each host's own cgroup subtree and namespace), ``nodes`` (importing the
images once a host runs).
"""

from capi_remote_testbed.hosts.fleet import HostFleet
from capi_remote_testbed.hosts.host import Host
from capi_remote_testbed.hosts.keys import SshKey, known_hosts_line, public_pkey
from capi_remote_testbed.hosts.leftovers import fleet_is_live, fleet_leftovers, sweep
from capi_remote_testbed.hosts.names import DEPLOY, OPERATOR, ROOT, USERS
from capi_remote_testbed.hosts.system import HostError

__all__ = [
    "DEPLOY",
    "OPERATOR",
    "ROOT",
    "USERS",
    "Host",
    "HostError",
    "HostFleet",
    "SshKey",
    "fleet_is_live",
    "fleet_leftovers",
    "known_hosts_line",
    "public_pkey",
    "sweep",
]
