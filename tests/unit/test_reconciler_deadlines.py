"""spec.timeouts → the deadlines handed to the SSH runner or the provisioning Job: the model
(the CRD's defaults come from it) is the one source of every default."""

from __future__ import annotations

import attrs

from capi_remote.api import RemoteMachineSpec, Timeouts
from reconcilers.remote import Deadlines

DEFAULTS = Deadlines(connect=15.0, command=1800.0, job=3600.0)


def test_absent_timeouts_take_the_model_defaults() -> None:
    assert Deadlines.of({}) == DEFAULTS
    assert attrs.fields(RemoteMachineSpec).timeouts.default == Timeouts()


def test_each_field_becomes_seconds() -> None:
    spec = {"timeouts": {"connect": "1m30s", "command": "2s", "job": "1h"}}
    assert Deadlines.of(spec) == Deadlines(connect=90.0, command=2.0, job=3600.0)


def test_setting_only_the_job_deadline_keeps_the_step_deadline() -> None:
    """``timeouts: {job: 2h}`` once cut the step deadline from 30 to 10 minutes (the CRD
    defaulted the other fields to values the runner did not use when timeouts was absent)."""
    assert Deadlines.of({"timeouts": {"job": "2h"}}) == attrs.evolve(DEFAULTS, job=7200.0)
