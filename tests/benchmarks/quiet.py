"""Benchmarks print their numbers on stdout: logs go to stderr, warnings and worse only."""

from __future__ import annotations

import logging
import sys

import structlog


def warnings_to_stderr() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
