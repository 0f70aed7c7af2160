"""Bounded channels between stages.

A channel holds at most ``capacity`` items.  ``put`` blocks while it is full:
that is how backpressure travels from a slow stage back to the ring buffer,
where the kernel counts what it cannot reserve.  A ``put`` gives up only when
its ``Cancel`` is set (the agent is failing, or past its exit deadline) and
says so; the caller then counts what it could not hand on under the Cancel's
reason, and goes on (its later puts fail the same way).  The
producer calls ``close()`` after its last item; the consumer then drains what
is left and ``get`` reports the end.  ``abandon()`` empties a channel whose
consumer has failed and returns what was in it, to be counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from producer.telemetry.events import Drop

T = TypeVar("T")


class Cancel:
    """Set once, with the reason every record that can no longer move is counted under."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = Drop.AFTER_FAILURE

    def set(self, reason: Drop) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class Closed(Exception):
    """``get`` on a channel that is closed and empty: the producer has finished."""


class Channel(Generic[T]):
    def __init__(self, name: str, capacity: int, *, on_full_wait: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._closed = False
        self._cond = threading.Condition()
        self._on_full_wait = on_full_wait

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, cancel: Cancel | None = None) -> bool:
        """Append ``item``, waiting while the channel is full; False if ``cancel`` was set first."""
        with self._cond:
            while len(self._items) >= self.capacity:
                if cancel is not None and cancel.is_set():
                    return False
                if self._on_full_wait is not None:
                    self._on_full_wait()
                self._cond.wait(0.1)
            if self._closed:
                raise RuntimeError(f"put on closed channel {self.name}")
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None when ``timeout`` passes first; raises Closed at the end."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise Closed(self.name)
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abandon(self) -> list[T]:
        """Empty the channel (its consumer is gone) and return what was in it."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items
