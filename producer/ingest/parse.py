"""Request bodies of ``POST /api/v1/logging`` into LogEvent rows (pure; tests/test_ingest_parse.py).

A body is one JSON object, a JSON array of them, or NDJSON (one per line):
an ``application/x-ndjson`` content type says NDJSON, otherwise the body is
JSON if it parses as one value and NDJSON if it does not but spans lines.
Each item becomes a row of ``FIELDS`` (schemas/LogEvent.avsc without the
fields the agent fills in: host, instance, sequence), or an ``(index,
reason)``; the caller refuses the whole request when any item is bad, so a
retry never half-duplicates.

Shapes (``Shape``), chosen by the path:

* ``generic``: ``{"message", "timestamp"?, "level"?, "details"?}``; the
  timestamp is RFC 3339 or epoch milliseconds; ``details`` holds the 5-tuple
  (``src_ip``, ``dst_ip``, ``src_port``, ``dst_port`` or ``port``,
  ``protocol``) and free attributes (strings, numbers, booleans).  Unknown
  top-level keys are refused, so a misspelt ``msg`` is not taken silently.
* ``kong``: Kong's http-log entry.  It has the client's address but not its
  port, nor the server's side: the README's recipe adds ``client_port``,
  ``server_addr`` and ``server_port`` with ``custom_fields_by_lua``; without
  them the event has no Community ID.
* ``apisix``: APISIX's http-logger entry, its default form (``client_ip``,
  ``start_time``, ``request``, ``response``, ...) or the README's
  ``log_format`` (flat, with ``client_port``, ``server_addr``,
  ``server_port``; nginx variables arrive as strings).
"""

from __future__ import annotations

import calendar
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from producer.config import protocol_number
from producer.ingest import _generic  # type: ignore[attr-defined]

#: the values of a row, in schemas/LogEvent.avsc's order (tests check it against the encoder)
FIELDS = ("timestamp_ns", "received_ns", "source", "level", "message", "src_ip", "dst_ip", "src_port", "dst_port",
          "ip_proto", "http_method", "http_url", "http_status", "http_user_agent", "http_request_bytes",
          "http_response_bytes", "duration_ns", "attributes")
Row = tuple[Any, ...]

TCP = 6
MAX_NS = 2**63 - 1
#: listed in a 400 at most; the count says how many there were
MAX_LISTED = 100


class Shape(Enum):
    """The input shapes; the value is the LogEvent ``source`` enum's index."""

    GENERIC = 0
    KONG = 1
    APISIX = 2


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, no events): a 400 without an index."""


class Bad(ValueError):
    """One item is unusable; the message is the reason a 400 gives for its index."""


@dataclass(frozen=True, slots=True)
class Parsed:
    rows: list[Row]
    errors: list[tuple[int, str]]  # (index, reason), in order
    items: int

    def error_body(self) -> dict[str, Any]:
        listed = [{"index": i, "reason": r} for i, r in self.errors[:MAX_LISTED]]
        return {"error": f"{len(self.errors)} of {self.items} events are invalid; none was accepted",
                "invalid": listed}


# -- the body ------------------------------------------------------------------


def items_of(body: bytes, content_type: str) -> list[Any]:
    """The JSON values the body holds; an NDJSON line that is not JSON is kept as a ``Bad``."""
    if not body.strip():
        raise BodyError("the body is empty")
    if "ndjson" not in content_type:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in body.strip():
                raise BodyError(f"the body is not JSON: {exc}") from None
        else:
            return value if isinstance(value, list) else [value]
    out: list[Any] = []
    for line in body.split(b"\n"):
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                out.append(Bad(f"not JSON: {exc}"))
    return out


class Values:
    """The conversions that repeat from event to event (addresses, protocol names), cached; one per
    server.  Each cache starts again at CACHE_MAX entries, so memory stays bounded."""

    CACHE_MAX = 1 << 16

    def __init__(self) -> None:
        self.addresses: dict[str, bytes] = {}  # read by _generic.c too
        self.protocols: dict[Any, int] = {}

    def address(self, value: Any, what: str) -> bytes:
        if value.__class__ is str:
            raw = self.addresses.get(value)
            if raw is not None:
                return raw
        raw = address(value, what)
        if len(self.addresses) >= self.CACHE_MAX:
            self.addresses.clear()
        self.addresses[value] = raw
        return raw

    def protocol(self, value: Any) -> int:
        if value.__class__ in (str, int):
            number = self.protocols.get(value)
            if number is not None:
                return number
        number = protocol(value)
        if len(self.protocols) >= self.CACHE_MAX:
            self.protocols.clear()
        self.protocols[value] = number
        return number


def parse(body: bytes, content_type: str, shape: Shape, received_ns: int, values: Values | None = None, *,
          compiled: bool = True) -> Parsed:
    """Every item of ``body`` as a row, or why not.  Raises BodyError for a body that has no items.

    Generic events take ``_generic.c`` first, which converts the common case and leaves the rest
    (None) to ``generic`` here; ``compiled=False`` is Python alone (the tests' reference)."""
    items = items_of(body, content_type)
    if not items:
        raise BodyError("the body holds no events")
    convert = CONVERTERS[shape]
    v = values or Values()
    fast: list[Row | None] = [None] * len(items)
    if compiled and shape is Shape.GENERIC:
        fast = _generic.rows(items, received_ns, v.addresses, v.protocols)
    rows: list[Row] = []
    errors: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        done = fast[i]
        if done is not None:
            rows.append(done)
            continue
        try:
            if item.__class__ is not dict:
                if isinstance(item, Bad):
                    raise item
                raise Bad(f"an event must be a JSON object, not {type(item).__name__}")
            rows.append(convert(item, received_ns, v))
        except Bad as exc:
            errors.append((i, str(exc)))
    return Parsed(rows if not errors else [], errors, len(items))


# -- values --------------------------------------------------------------------

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))\Z")


def rfc3339_ns(text: str) -> int:
    m = _RFC3339.match(text)
    if m is None:
        raise Bad(f"timestamp {text[:64]!r} is not RFC 3339 (2026-11-30T08:00:00.123Z)")
    year, month, day, hour, minute, sec = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = m.group(7) or ""
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour < 24
            and minute < 60 and sec < 61):
        raise Bad(f"timestamp {text!r} is not a valid date and time")
    secs = calendar.timegm((year, month, day, hour, minute, min(sec, 59), 0, 0, 0))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        secs -= offset if m.group(9) == "+" else -offset
    ns = secs * 1_000_000_000 + int(frac.ljust(9, "0") or 0)
    if not 0 <= ns <= MAX_NS:
        raise Bad(f"timestamp {text!r} is outside 1970..2262")
    return ns


def epoch_ms_ns(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad(f"{what} must be epoch milliseconds or RFC 3339")
    ns = int(value * 1_000_000) if isinstance(value, float) else value * 1_000_000
    if not 0 <= ns <= MAX_NS:
        raise Bad(f"{what} {value} is outside 1970..2262")
    return ns


def timestamp_ns(value: Any, what: str = "timestamp") -> int:
    return rfc3339_ns(value) if isinstance(value, str) else epoch_ms_ns(value, what)


def address(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise Bad(f"{what} must be an IP address string")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, value)
        except OSError:
            continue
    raise Bad(f"{what} {value[:64]!r} is not an IP address")


def whole(value: Any, what: str, high: int) -> int:
    """An integer 0..high; nginx variables and custom fields arrive as digit strings, which are taken too."""
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise Bad(f"{what} must be an integer 0..{high}")
    return value


def port(value: Any, what: str) -> int:
    if value.__class__ is int and 0 <= value <= 0xFFFF:
        return int(value)
    return whole(value, what, 0xFFFF)


def protocol(value: Any) -> int:
    number = protocol_number(str(value)) if isinstance(value, str | int) and not isinstance(value, bool) else None
    if number is None:
        raise Bad(f"protocol {value!r} is not a protocol name (tcp, udp, ...) or number 0..255")
    return number


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Bad(f"{what} must be a string")
    return value


def scalar_text(value: Any, what: str) -> str:
    """An attribute's value as a string: strings as they are, numbers and booleans as JSON writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    raise Bad(f"{what} must be a string, number or boolean")


def _pair(src: bytes | None, dst: bytes | None) -> None:
    if src is not None and dst is not None and len(src) != len(dst):
        raise Bad("src_ip and dst_ip are of different address families")


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _opt(value: Any, convert: Callable[[Any, str], Any], what: str) -> Any:
    return None if value is None or value == "" else convert(value, what)


def _attributes(pairs: Mapping[str, Any]) -> dict[str, str]:
    return {k: scalar_text(v, k) for k, v in pairs.items() if v is not None}


# -- the shapes ----------------------------------------------------------------

_GENERIC_KEYS = frozenset({"message", "timestamp", "level", "details"})
_TUPLE_KEYS = frozenset({"src_ip", "dst_ip", "src_port", "dst_port", "port", "protocol"})


def generic(item: dict[str, Any], received_ns: int, v: Values) -> Row:
    """The hot path of the ingest (one call an event): checks first, few calls."""
    if not item.keys() <= _GENERIC_KEYS:
        raise Bad(f"unknown field {sorted(item.keys() - _GENERIC_KEYS)[0]!r} (free attributes go in details)")
    message = item.get("message")
    if message.__class__ is not str:
        raise Bad("message is missing" if message is None else "message must be a string")
    ts = item.get("timestamp")
    level = item.get("level")
    level = text(level, "level").lower() if level is not None and level != "" else None
    details = item.get("details")
    src = dst = sport = dport = proto = None
    attrs: dict[str, str] = {}
    if details is not None:
        if details.__class__ is not dict:
            raise Bad("details must be a JSON object")
        for key, value in details.items():
            if key not in _TUPLE_KEYS:
                if value is not None:
                    attrs[key] = value if value.__class__ is str else scalar_text(value, f"details.{key}")
            elif value is None or value == "":
                continue
            elif key == "src_ip":
                src = v.address(value, "details.src_ip")
            elif key == "dst_ip":
                dst = v.address(value, "details.dst_ip")
            elif key == "src_port":
                sport = port(value, "details.src_port")
            elif key == "protocol":
                proto = v.protocol(value)
            else:  # dst_port or port
                if dport is not None:
                    raise Bad("details has both dst_port and port")
                dport = port(value, "details.dst_port")
        if src is not None and dst is not None and len(src) != len(dst):
            raise Bad("src_ip and dst_ip are of different address families")
    return (received_ns if ts is None else timestamp_ns(ts), received_ns, 0, level, message, src, dst, sport, dport,
            proto, None, None, None, None, None, None, None, attrs)


def _request_line(method: str | None, url: str | None, status: int | None) -> str:
    return " ".join(str(p) for p in (method, url, status) if p is not None) or "(no request line)"


def kong(item: dict[str, Any], received_ns: int, v: Values) -> Row:
    request, response = item.get("request"), item.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise Bad("not a Kong http-log entry (no request and response objects)")
    src = _opt(item.get("client_ip"), v.address, "client_ip")
    dst = _opt(item.get("server_addr"), v.address, "server_addr")
    _pair(src, dst)
    method = _opt(request.get("method"), text, "request.method")
    url = _opt(request.get("url") or request.get("uri"), text, "request.url")
    status = _opt(response.get("status"), lambda v, w: whole(v, w, 999), "response.status")
    latency = _get(item, "latencies", "request")
    started = item.get("started_at")
    attrs = _attributes({"service": _get(item, "service", "name"), "route": _get(item, "route", "name"),
                         "consumer": _get(item, "consumer", "username") or _get(item, "consumer", "id"),
                         "upstream_uri": item.get("upstream_uri"),
                         "kong_latency_ms": _get(item, "latencies", "kong"),
                         "proxy_latency_ms": _get(item, "latencies", "proxy"),
                         "host": _get(request, "headers", "host")})
    return (epoch_ms_ns(started, "started_at") if started is not None else received_ns, received_ns,
            Shape.KONG.value, None, _request_line(method, url, status), src, dst,
            _opt(item.get("client_port"), port, "client_port"), _opt(item.get("server_port"), port, "server_port"),
            TCP, method, url, status, _opt(_get(request, "headers", "user-agent"), text, "user-agent"),
            _opt(request.get("size"), lambda v, w: whole(v, w, MAX_NS), "request.size"),
            _opt(response.get("size"), lambda v, w: whole(v, w, MAX_NS), "response.size"),
            None if latency is None else epoch_ms_ns(latency, "latencies.request"), attrs)


_APISIX_FLAT = frozenset({"@timestamp", "client_ip", "client_port", "server_addr", "server_port", "method", "uri",
                          "status", "request_length", "bytes_sent", "request_time", "user_agent"})


def _seconds_ns(value: Any, what: str) -> int:
    """nginx's ``$request_time``: seconds with a millisecond fraction, as a string or a number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise Bad(f"{what} must be a number of seconds") from None
    if not 0 <= seconds < MAX_NS / 1e9:
        raise Bad(f"{what} is out of range")
    return round(seconds * 1e9)


def apisix(item: dict[str, Any], received_ns: int, v: Values) -> Row:
    if isinstance(item.get("request"), dict):
        request, response = item["request"], item.get("response") or {}
        method = _opt(request.get("method"), text, "request.method")
        url = _opt(request.get("url") or request.get("uri"), text, "request.url")
        status = _opt(_get(response, "status"), lambda v, w: whole(v, w, 999), "response.status")
        started = item.get("start_time")
        latency = item.get("latency")
        return (epoch_ms_ns(started, "start_time") if started is not None else received_ns, received_ns,
                Shape.APISIX.value, None, _request_line(method, url, status),
                _opt(item.get("client_ip"), v.address, "client_ip"), None, None, None, TCP, method, url, status,
                _opt(_get(request, "headers", "user-agent"), text, "user-agent"),
                _opt(request.get("size"), lambda v, w: whole(v, w, MAX_NS), "request.size"),
                _opt(_get(response, "size"), lambda v, w: whole(v, w, MAX_NS), "response.size"),
                None if latency is None else epoch_ms_ns(latency, "latency"),
                _attributes({"route_id": item.get("route_id"), "service_id": item.get("service_id"),
                             "upstream": item.get("upstream"), "host": _get(request, "headers", "host")}))
    if "client_ip" not in item and "method" not in item:
        raise Bad("not an APISIX http-logger entry (neither its default form nor the README's log_format)")
    src = _opt(item.get("client_ip"), v.address, "client_ip")
    dst = _opt(item.get("server_addr"), v.address, "server_addr")
    _pair(src, dst)
    method = _opt(item.get("method"), text, "method")
    url = _opt(item.get("uri"), text, "uri")
    status = _opt(item.get("status"), lambda v, w: whole(v, w, 999), "status")
    ts = item.get("@timestamp")
    return (timestamp_ns(ts, "@timestamp") if ts else received_ns, received_ns, Shape.APISIX.value, None,
            _request_line(method, url, status), src, dst, _opt(item.get("client_port"), port, "client_port"),
            _opt(item.get("server_port"), port, "server_port"), TCP, method, url, status,
            _opt(item.get("user_agent"), text, "user_agent"),
            _opt(item.get("request_length"), lambda v, w: whole(v, w, MAX_NS), "request_length"),
            _opt(item.get("bytes_sent"), lambda v, w: whole(v, w, MAX_NS), "bytes_sent"),
            _opt(item.get("request_time"), _seconds_ns, "request_time"),
            _attributes({k: v for k, v in item.items() if k not in _APISIX_FLAT and not isinstance(v, dict | list)}))


CONVERTERS: Mapping[Shape, Callable[[dict[str, Any], int, Values], Row]] = {
    Shape.GENERIC: generic, Shape.KONG: kong, Shape.APISIX: apisix}
