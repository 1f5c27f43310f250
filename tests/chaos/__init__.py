"""Fault-injection (chaos) tests on a control plane of their own; see docs/reliability.md."""
