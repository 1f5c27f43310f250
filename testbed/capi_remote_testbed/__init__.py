"""The local test bed: a real control plane built from pinned Go modules, and namespaced sshd hosts.

Used by the test suite, by ``capi-remote dev up`` and by ``make run``.
"""
