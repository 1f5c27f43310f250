"""Log output: tracebacks never carry local variables (they hold keys and bootstrap data)."""

from __future__ import annotations

import pytest
import structlog

from capi_remote.logs import configure

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- not-a-real-key"


def _fail_with_a_secret_in_scope() -> None:
    private_key = SECRET  # noqa: F841 - a local a traceback with locals would print
    raise ValueError("boom")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_do_not_show_locals(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure(log_format, "info")  # type: ignore[arg-type]
    try:
        _fail_with_a_secret_in_scope()
    except ValueError:
        structlog.get_logger("test").exception("reconcile failed")
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "boom" in err and "_fail_with_a_secret_in_scope" in err  # the traceback is there
    assert SECRET not in err and "not-a-real-key" not in err
