"""capi-remote: a Cluster API infrastructure provider for Linux hosts reachable over SSH."""

__version__ = "0.1.0"
