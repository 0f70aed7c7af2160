"""Named counters shared by the stages (kernel counters are read separately).

Every record the agent drains ends in exactly one of: delivered, or a named
drop reason.  ``DROP_REASONS`` lists them; tests reconcile totals with them.
"""

from __future__ import annotations

import threading
from typing import Final

DROP_REASONS: Final = (
    "dropped_serialize_error",     # a record did not fit the schema
    "dropped_delivery_failed",     # the broker refused / delivery timed out for good
    "dropped_unflushed_at_exit",   # still queued when the exit flush deadline passed
    "dropped_stdout_closed",       # --stdout: the reader went away
    "dropped_after_failure",       # drained, but a stage failed and the agent stopped
)


class Counters:
    """Monotonic named counters; increments from several threads are locked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
