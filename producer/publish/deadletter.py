"""The dead-letter file: messages Kafka refused for good, with the reason.

One JSON object per line in ``<state_dir>/dead-letter.jsonl``: the time, the
topic, the key, librdkafka's error name and text, how many records the message
stands for, and the message value in base64 (still Confluent-framed Avro, so
it can be decoded or re-produced by hand).  Each line is flushed as written.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path


class DeadLetters:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.written = 0

    def write(self, topic: str, key: bytes, value: bytes, code: str, reason: str, records: int) -> None:
        line = json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topic": topic,
            "key": key.decode(errors="replace"), "error": code, "reason": reason, "records": records,
            "value_base64": base64.b64encode(value).decode(),
        }, separators=(",", ":"))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.written += 1
