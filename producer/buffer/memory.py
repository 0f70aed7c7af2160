"""``buffer.type = memory``: entries in a dict; gone when the process is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from producer.buffer.base import Stored
from producer.records import Encoded


class MemoryStore:
    def __init__(self) -> None:
        self._entries: dict[int, Encoded] = {}
        self._next = 1

    def append(self, entry: Encoded, keys: Sequence[tuple[str, int]] = (), durable: bool = False) -> int:
        entry_id = self._next
        self._next += 1
        self._entries[entry_id] = entry
        return entry_id

    def load(self, entry_id: int) -> Encoded:
        return self._entries[entry_id]

    def delete(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)

    def stuck(self) -> bool:
        return False

    def existing(self) -> Iterator[Stored]:
        return iter(())

    def close(self) -> None:
        self._entries.clear()
