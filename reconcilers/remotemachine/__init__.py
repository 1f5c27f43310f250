"""RemoteMachine: one provisioning flow, two backends. See docs/architecture.md for a map; in
short: ``reconciler.py`` dispatches, ``provision.py`` is the flow over the ``backend.py``
protocol, ``runner_backend.py`` and ``job_backend.py`` run attempts, ``cleanup.py`` deletes,
``nodelink.py`` keeps a provisioned machine linked to its Node, ``watches.py`` wires it all."""

from reconcilers.remotemachine.cleanup import FORCE_RELEASE_ANNOTATION
from reconcilers.remotemachine.machinestatus import FINALIZER, provider_id
from reconcilers.remotemachine.watches import setup
from reconcilers.secrets import referenced_secrets

__all__ = [
    "FINALIZER",
    "FORCE_RELEASE_ANNOTATION",
    "provider_id",
    "referenced_secrets",
    "setup",
]
