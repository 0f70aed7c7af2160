"""Structured logs: JSON lines in production, readable text on a terminal."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


class RepeatFilter(logging.Filter):
    """Lets a message of the publish stage (librdkafka's own lines among them) or a drop event
    through once per ``interval_s`` per (logger, level, shape).

    The shape is the message with its numbers blanked, so "connect to 127.0.0.1:9092
    failed (after 0ms)" repeating every 50 ms during a broker outage is logged once per
    interval, with how many were held back.  Clock injected for tests.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 prefix: tuple[str, ...] = ("producer.publish", "producer.telemetry.events")) -> None:
        super().__init__()
        self._prefix = prefix
        self._interval = interval_s
        self._clock = clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.levelno, re.sub(r"\d+", "#", record.getMessage()))
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        held = seen[1] if seen is not None else 0
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} similar held back in the last {self._interval:g}s)"
            record.args = None
        return True


def setup_logging(fmt: str = "auto", level: str = "info") -> None:
    """``fmt``: json, text, or auto (text on a terminal, JSON otherwise)."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("producer").setLevel(level.upper())
    # the registry client's HTTP library logs every request (URLs may carry credentials)
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
