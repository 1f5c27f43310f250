"""Log output: tracebacks never carry local variables (they hold keys and bootstrap data)."""

from __future__ import annotations

import json
import logging

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


def test_library_logs_are_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    try:
        logging.getLogger("aiohttp.client").warning("connection pool is full, %s", "waiting")
        try:
            raise OSError("reset")
        except OSError:
            logging.getLogger("kubernetes_asyncio").error("request failed", exc_info=True)
        logging.getLogger("aiohttp.client").info("below the libraries' WARNING floor")
        # A failed handshake: the runner reports it; paramiko's own lines are dropped.
        logging.getLogger("paramiko.transport").error("Exception (client): Error reading banner")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"], e["event"]) for e in lines] == [
        ("aiohttp.client", "warning", "connection pool is full, waiting"),
        ("kubernetes_asyncio", "error", "request failed"),
    ]
    assert lines[1]["exception"][0]["exc_value"] == "reset"
    assert all("timestamp" in e for e in lines)
