"""``GET /api/v1/status``: what the agent is doing now, as JSON; ``hdrlog status`` prints it for a person.

Interfaces and hook, every counter (the HTTP ingest's apart, under
``ingest``), rates over the last seconds, channel
depths, the buffer's state, the schema ids, and the delivery state: ``ok``,
``retrying`` (a retriable failure is being re-sent), or ``outage`` (the broker
unreachable since a time), with the last delivery error and when it happened.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from producer.buffer.base import Buffer
from producer.channel import Channel
from producer.telemetry.events import Stat, Telemetry

RATE_WINDOW_S = 10.0


def iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix)) + f".{int(unix % 1 * 1000):03d}Z"


@dataclass
class StatusSources:
    """Where each part of the status comes from (pipeline.build fills it)."""

    host_id: str
    instance_id: str
    capture_id: str
    hook: str
    interfaces: Callable[[], list[str]]
    kernel: Callable[[], dict[str, int]]
    telemetry: Telemetry
    buffer: Buffer
    channels: Sequence[Channel[Any]]
    output: Mapping[str, Any]  # topic, shape, schema ids; or the JSON-lines target
    holding: Callable[[], bool] = lambda: False
    in_flight: Callable[[], int] = lambda: 0
    ingest: Callable[[], dict[str, int]] | None = None  # the ingest stage's queue, if it runs


class Status:
    def __init__(self, src: StatusSources, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._src = src
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def sample(self) -> None:
        """Remember the counters now (called every second) for the rates."""
        k = self._src.kernel()
        t = self._src.telemetry
        now = self._clock()
        self._samples.append((now, k.get("seen", 0), t.get(Stat.DRAINED), t.get(Stat.DELIVERED)))
        while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()

    def _rates(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {"seen_per_s": 0.0, "drained_per_s": 0.0, "delivered_per_s": 0.0}
        (t0, s0, d0, v0), (t1, s1, d1, v1) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-9)
        return {"seen_per_s": round((s1 - s0) / span, 1), "drained_per_s": round((d1 - d0) / span, 1),
                "delivered_per_s": round((v1 - v0) / span, 1)}

    def __call__(self) -> dict[str, Any]:
        s = self._src
        t = s.telemetry
        buf = s.buffer.state()
        err = t.last_delivery_error
        outage = t.outage_since
        state = "outage" if outage is not None else "retrying" if s.holding() else "ok"
        oldest = None
        if buf.oldest_captured_ns:
            oldest = round(max(0.0, time.monotonic_ns() - buf.oldest_captured_ns) / 1e9, 3)
        return {
            "host_id": s.host_id, "agent_instance": s.instance_id, "capture_id": s.capture_id,
            "uptime_s": round(self._clock() - self._started, 3),
            "hook": s.hook, "interfaces": s.interfaces(),
            "output": dict(s.output),
            "kernel": s.kernel(), "agent": t.snapshot(), "rates": self._rates(),
            "channels": {c.name: {"depth": len(c), "capacity": c.capacity} for c in s.channels},
            "buffer": {"type": s.buffer.kind, "entries": buf.entries, "records": buf.records, "bytes": buf.bytes,
                       "cap_bytes": buf.cap_bytes, "in_flight_entries": buf.in_flight,
                       "oldest_record_age_s": oldest},
            "delivery": {
                "state": state, "outage_since": None if outage is None else iso(outage),
                "in_flight_entries": s.in_flight(),
                "last_error": None if err is None else {"text": err.text, "retriable": err.retriable,
                                                        "at": iso(err.at)},
            },
            "ingest": None if s.ingest is None else {"counters": t.ingest_snapshot(), "queue": s.ingest()},
        }


def _text(val: Any) -> str:
    if isinstance(val, Mapping):
        return ", ".join(f"{k} = {v}" for k, v in val.items())
    return str(val)


def render(status: Mapping[str, Any]) -> str:
    """``hdrlog status``: the status for a person."""
    k, a, r, b, d = (status["kernel"], status["agent"], status["rates"], status["buffer"], status["delivery"])
    out = status["output"]
    lines = [
        f"host {status['host_id']}  instance {status['agent_instance']}  up {status['uptime_s']:.0f}s",
        f"capture  {status['hook']} on {', '.join(status['interfaces']) or '(no interface yet)'}  "
        f"seen {k.get('seen', 0)}  emitted {k.get('emitted', 0)}  "
        f"lost in ring buffer {k.get('ringbuf_reserve_failed', 0)}  ({r['seen_per_s']:g} packets/s)",
        "output   " + ", ".join(f"{key} {_text(val)}" for key, val in out.items()),
        f"records  drained {a['drained']}  delivered {a['delivered']}  printed {a['printed']}  "
        f"({r['delivered_per_s']:g}/s)",
        f"buffer   {b['type']}: {b['records']} records, {b['bytes']} of {b['cap_bytes']} bytes, "
        f"{b['in_flight_entries']} entries in flight",
        f"delivery {d['state']}" + (f" since {d['outage_since']}" if d["outage_since"] else ""),
    ]
    if d["last_error"]:
        e = d["last_error"]
        lines.append(f"last error at {e['at']} ({'retriable' if e['retriable'] else 'permanent'}): {e['text']}")
    if status.get("ingest"):
        c, q = status["ingest"]["counters"], status["ingest"]["queue"]
        refused = {n.removeprefix("refused_events_"): v for n, v in c.items() if n.startswith("refused_events_")}
        lines.append(f"ingest   requests {c['requests']}  events accepted {c['accepted']}  "
                     f"delivered {c['delivered']}  duplicates {c['duplicate_requests']}  "
                     f"waiting {q['held_events']}  refused "
                     + (", ".join(f"{n} {v}" for n, v in refused.items() if v) or "none"))
    drops = {n: v for n, v in a.items() if n.startswith("dropped_") and v}
    lines.append("dropped  " + (", ".join(f"{n.removeprefix('dropped_')} {v}" for n, v in drops.items()) or "none"))
    channels = ", ".join(f"{n} {c['depth']}/{c['capacity']}" for n, c in status["channels"].items())
    lines.append(f"channels {channels}")
    return "\n".join(lines)
