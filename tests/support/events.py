"""An EventRecorder stand-in that keeps what was recorded, for asserting on Events."""

from __future__ import annotations

from typing import Any, cast

from capi_remote import EventRecorder


class RecordedEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str, str]] = []  # (object name, type, reason, message)

    def record(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.recorded.append((obj["metadata"]["name"], type_, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason, _ in self.recorded]

    def as_recorder(self) -> EventRecorder:
        return cast(EventRecorder, self)
