"""The ingest's parser (producer/ingest/parse.py): bodies in, LogEvent rows or indexed reasons out."""

from __future__ import annotations

import random
import socket
from typing import Any

import orjson
import pytest

from producer.ingest.parse import FIELDS, MAX_LISTED, BodyError, Shape, Values, parse, rfc3339_ns
from producer.serialize.rows import RowEncoder
from producer.serialize.schemas import AvroSchema

NOW = 1_764_489_600_000_000_000  # 2025-11-30T08:00:00Z


def rows(body: Any, shape: Shape = Shape.GENERIC, content_type: str = "application/json") -> list[dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    parsed = parse(raw, content_type, shape, NOW)
    assert parsed.errors == [], parsed.errors
    return [dict(zip(FIELDS, r, strict=True)) for r in parsed.rows]


def errors(body: Any, shape: Shape = Shape.GENERIC) -> list[tuple[int, str]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    parsed = parse(raw, "application/json", shape, NOW)
    assert parsed.rows == []
    return parsed.errors


def test_the_row_is_the_encoders_value_order() -> None:
    enc = RowEncoder(AvroSchema.load("LogEvent"), 1, {"host_id": "h", "agent_instance": "i"})
    assert tuple(enc.value_fields) == FIELDS


def test_a_generic_event() -> None:
    [r] = rows({"message": "login failed", "level": "WARN", "timestamp": "2026-11-30T08:00:00.123456789Z",
                "details": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 40000, "port": 443,
                            "protocol": "tcp", "user": "alice", "attempt": 3, "admin": False, "skip": None}})
    assert r["message"] == "login failed" and r["level"] == "warn" and r["source"] == Shape.GENERIC.value
    assert r["timestamp_ns"] == 1_764_489_600_123_456_789 + 365 * 86400 * 10**9
    assert r["received_ns"] == NOW
    assert (r["src_ip"], r["dst_ip"]) == (socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"))
    assert (r["src_port"], r["dst_port"], r["ip_proto"]) == (40000, 443, 6)
    assert r["attributes"] == {"user": "alice", "attempt": "3", "admin": "false"}
    assert r["http_method"] is None and r["duration_ns"] is None


def test_without_a_timestamp_the_event_time_is_the_receive_time() -> None:
    [r] = rows({"message": "m"})
    assert r["timestamp_ns"] == r["received_ns"] == NOW
    assert (r["src_ip"], r["ip_proto"], r["attributes"]) == (None, None, {})


def test_epoch_milliseconds_and_ipv6() -> None:
    [r] = rows({"message": "m", "timestamp": 1764489600123,
                "details": {"src_ip": "fd00::1", "dst_ip": "fd00::2", "protocol": 17}})
    assert r["timestamp_ns"] == 1764489600123 * 10**6
    assert r["src_ip"] == socket.inet_pton(socket.AF_INET6, "fd00::1") and r["ip_proto"] == 17


@pytest.mark.parametrize(("text", "ns"), [
    ("1970-01-01T00:00:00Z", 0),
    ("2026-11-30T09:00:00+01:00", 1_796_025_600 * 10**9),
    ("2026-11-30T08:00:00.5z", 1_796_025_600 * 10**9 + 500_000_000),
    ("2026-11-30 07:30:00-00:30", 1_796_025_600 * 10**9),
])
def test_rfc3339(text: str, ns: int) -> None:
    assert rfc3339_ns(text) == ns


def test_an_array_and_ndjson_take_many() -> None:
    assert [r["message"] for r in rows([{"message": "a"}, {"message": "b"}])] == ["a", "b"]
    body = b'{"message": "a"}\n\n{"message": "b"}\r\n{"message": "c"}\n'
    assert [r["message"] for r in rows(body)] == ["a", "b", "c"]
    assert [r["message"] for r in rows(b'{"message": "a"}', content_type="application/x-ndjson")] == ["a"]


def test_every_bad_item_is_named_by_index() -> None:
    body = [{"message": "ok"}, {"msg": "typo"}, "text", {"message": 5},
            {"message": "m", "timestamp": "yesterday"}, {"message": "m", "timestamp": "2026-02-30T00:00:00Z"},
            {"message": "m", "details": {"src_ip": "10.0.0.1", "dst_ip": "fd00::1"}},
            {"message": "m", "details": {"src_ip": "10.0.0.256"}},
            {"message": "m", "details": {"src_port": 70000}}, {"message": "m", "details": {"port": True}},
            {"message": "m", "details": {"protocol": "tcpx"}}, {"message": "m", "details": {"x": {"nested": 1}}},
            {"message": "m", "details": {"port": 1, "dst_port": 2}}, {"message": "m", "timestamp": -1},
            {"message": "m", "details": []}]
    got = errors(body)
    assert [i for i, _ in got] == list(range(1, len(body)))
    reasons = dict(got)
    assert reasons[1] == "unknown field 'msg' (free attributes go in details)"
    assert reasons[2] == "an event must be a JSON object, not str"
    assert reasons[3] == "message must be a string"
    assert "is not RFC 3339" in reasons[4] and "not a valid date" in reasons[5]
    assert reasons[6] == "src_ip and dst_ip are of different address families"
    assert reasons[7] == "details.src_ip '10.0.0.256' is not an IP address"
    assert reasons[8] == "details.src_port must be an integer 0..65535"
    assert reasons[9] == "details.dst_port must be an integer 0..65535"
    assert "is not a protocol name" in reasons[10]
    assert reasons[11] == "details.x must be a string, number or boolean"
    assert reasons[12] == "details has both dst_port and port"
    assert "outside 1970..2262" in reasons[13]
    assert reasons[14] == "details must be a JSON object"


def test_a_bad_ndjson_line_is_named_and_the_others_still_checked() -> None:
    parsed = parse(b'{"message": "a"}\n{not json\n{"msg": 1}\n', "", Shape.GENERIC, NOW)
    assert [i for i, _ in parsed.errors] == [1, 2] and parsed.items == 3
    assert parsed.errors[0][1].startswith("not JSON:")
    body = parsed.error_body()
    assert body["error"] == "2 of 3 events are invalid; none was accepted"
    assert [e["index"] for e in body["invalid"]] == [1, 2]


def test_a_400_lists_at_most_a_hundred() -> None:
    parsed = parse(orjson.dumps([{}] * 250), "application/json", Shape.GENERIC, NOW)
    body = parsed.error_body()
    assert len(parsed.errors) == 250 and len(body["invalid"]) == MAX_LISTED
    assert body["error"].startswith("250 of 250")


@pytest.mark.parametrize(("body", "why"), [
    (b"", "the body is empty"), (b"  \n ", "the body is empty"), (b"[]", "the body holds no events"),
    (b"{oops", "the body is not JSON"),
])
def test_a_body_without_events(body: bytes, why: str) -> None:
    with pytest.raises(BodyError, match=why):
        parse(body, "application/json", Shape.GENERIC, NOW)


# Kong 3.x http-log, with the README's custom_fields_by_lua (client_port, server_addr, server_port)
KONG = {
    "request": {"method": "GET", "uri": "/orders/7?x=1", "url": "http://api.local:8000/orders/7?x=1", "size": 86,
                "querystring": {"x": "1"}, "headers": {"host": "api.local:8000", "user-agent": "curl/7.88.1",
                                                       "accept": "*/*"}},
    "upstream_uri": "/orders/7?x=1", "response": {"status": 200, "size": 934, "headers": {"content-length": "12"}},
    "tries": [{"balancer_latency": 0, "port": 8080, "ip": "10.1.0.9"}], "client_ip": "10.0.0.5",
    "latencies": {"request": 18, "kong": 2, "proxy": 16}, "started_at": 1764489600123,
    "service": {"name": "orders", "host": "orders.internal"}, "route": {"name": "orders-route"},
    "consumer": {"username": "alice"}, "workspace": "0dc6f45b", "source": "upstream",
    "client_port": "51234", "server_addr": "10.0.0.2", "server_port": "8000",
}


def test_a_kong_http_log_entry() -> None:
    [r] = rows(KONG, Shape.KONG)
    assert r["source"] == Shape.KONG.value and r["timestamp_ns"] == 1764489600123 * 10**6
    assert r["message"] == "GET http://api.local:8000/orders/7?x=1 200"
    assert (r["http_method"], r["http_url"], r["http_status"]) == ("GET", "http://api.local:8000/orders/7?x=1", 200)
    assert (r["http_user_agent"], r["http_request_bytes"], r["http_response_bytes"]) == ("curl/7.88.1", 86, 934)
    assert r["duration_ns"] == 18_000_000
    assert (r["src_ip"], r["src_port"]) == (socket.inet_aton("10.0.0.5"), 51234)
    assert (r["dst_ip"], r["dst_port"], r["ip_proto"]) == (socket.inet_aton("10.0.0.2"), 8000, 6)
    assert r["attributes"] == {"service": "orders", "route": "orders-route", "consumer": "alice",
                               "upstream_uri": "/orders/7?x=1", "kong_latency_ms": "2", "proxy_latency_ms": "16",
                               "host": "api.local:8000"}


def test_kong_without_the_recipe_has_no_ports_and_a_batch_is_an_array() -> None:
    plain = {k: v for k, v in KONG.items() if k not in ("client_port", "server_addr", "server_port")}
    got = rows([plain, plain], Shape.KONG)
    assert len(got) == 2 and got[0]["src_port"] is None and got[0]["dst_ip"] is None
    assert errors([{"message": "generic"}], Shape.KONG) == [
        (0, "not a Kong http-log entry (no request and response objects)")]


APISIX_DEFAULT = {
    "client_ip": "10.0.0.5", "route_id": "1", "service_id": "", "start_time": 1764489600123, "latency": 18.5,
    "upstream_latency": 16, "apisix_latency": 2.5, "upstream": "10.1.0.9:8080",
    "server": {"hostname": "gw-1", "version": "3.11.0"},
    "request": {"method": "POST", "uri": "/orders", "url": "http://api.local:9080/orders", "size": 120,
                "headers": {"host": "api.local:9080", "user-agent": "curl/7.88.1"}, "querystring": {}},
    "response": {"status": 201, "size": 77, "headers": {}},
}
# the README's log_format: nginx variables, so numbers arrive as strings
APISIX_FORMAT = {
    "@timestamp": "2026-11-30T08:00:00+00:00", "client_ip": "10.0.0.5", "client_port": "51234",
    "server_addr": "10.0.0.2", "server_port": "9080", "method": "POST", "uri": "/orders?id=3", "status": "201",
    "request_length": "120", "bytes_sent": "77", "request_time": "0.018", "user_agent": "curl/7.88.1",
    "route_id": "1", "host": "api.local",
}


def test_apisix_default_form() -> None:
    [r] = rows(APISIX_DEFAULT, Shape.APISIX)
    assert r["source"] == Shape.APISIX.value and r["message"] == "POST http://api.local:9080/orders 201"
    assert (r["src_ip"], r["src_port"], r["dst_ip"]) == (socket.inet_aton("10.0.0.5"), None, None)
    assert (r["http_status"], r["http_request_bytes"], r["http_response_bytes"]) == (201, 120, 77)
    assert r["duration_ns"] == 18_500_000 and r["timestamp_ns"] == 1764489600123 * 10**6
    assert r["attributes"] == {"route_id": "1", "service_id": "", "upstream": "10.1.0.9:8080",
                               "host": "api.local:9080"}


def test_apisix_log_format_form_carries_the_5_tuple() -> None:
    [r] = rows(APISIX_FORMAT, Shape.APISIX)
    assert (r["src_ip"], r["src_port"]) == (socket.inet_aton("10.0.0.5"), 51234)
    assert (r["dst_ip"], r["dst_port"], r["ip_proto"]) == (socket.inet_aton("10.0.0.2"), 9080, 6)
    assert (r["http_method"], r["http_url"], r["http_status"]) == ("POST", "/orders?id=3", 201)
    assert r["duration_ns"] == 18_000_000 and r["timestamp_ns"] == 1_796_025_600 * 10**9
    assert r["attributes"] == {"route_id": "1", "host": "api.local"}
    assert errors([{**APISIX_FORMAT, "status": "2x"}], Shape.APISIX) == [(0, "status must be an integer 0..999")]


def _random_item(rnd: random.Random) -> Any:
    def pick(*options: Any) -> Any:
        return rnd.choice(options)

    if rnd.random() < 0.03:
        return pick("text", 5, None, [1], {"message": "m", "extra": 1})
    item: dict[str, Any] = {}
    if rnd.random() < 0.95:
        item["message"] = pick("m", "", "é𝄞", 7, None, "x" * 50)
    if rnd.random() < 0.6:
        item["timestamp"] = pick(
            "2026-11-30T08:00:00Z", "2026-11-30t08:00:00.1z", "2024-02-29T23:59:60.123456789+01:30",
            "2023-02-29T00:00:00Z", "1970-01-01T00:00:00-00:01", "1969-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
            "2026-11-30T08:00:00.1234567891Z", "2026-11-30T08:00:00.Z", "2026-11-30 08:00:00+05:00",
            "２０２６-11-30T08:00:00Z", "2262-04-11T23:47:16.854775807Z", "2262-04-11T23:47:16.854775808Z",
            "", 0, 1764489600123, -1, 2**62, 9223372036854, 9223372036855, 1.5, True, None, [])
    if rnd.random() < 0.5:
        item["level"] = pick("INFO", "warn", "", None, "İ", 3, "Ünïcode")
    if rnd.random() < 0.9:
        if rnd.random() < 0.05:
            item["details"] = pick([], "x", None)
        else:
            details: dict[str, Any] = {}
            for key in rnd.sample(["src_ip", "dst_ip", "src_port", "dst_port", "port", "protocol", "user", "n",
                                   "flag", "empty", "none", "obj"], rnd.randint(0, 8)):
                details[key] = {
                    "src_ip": lambda: pick("10.0.0.1", "10.0.0.2", "fd00::1", "::ffff:1.2.3.4", "10.0.0.256", "", None,
                                           5),
                    "dst_ip": lambda: pick("10.0.0.2", "fd00::2", "1.1.1.1", "", None),
                    "src_port": lambda: pick(0, 80, 65535, 65536, -1, "443", True, None, "", 2**63 - 1),
                    "dst_port": lambda: pick(443, 8080, "8080", None, ""),
                    "port": lambda: pick(80, None, "", 70000),
                    "protocol": lambda: pick("tcp", "TCP", " udp ", 6, 17, 300, "x", None, "", True, "6"),
                    "user": lambda: pick("alice", "", "ü"),
                    "n": lambda: pick(1, 2.5, -0.0, 1e30, -(2**63)),
                    "flag": lambda: pick(True, False),
                    "empty": lambda: "",
                    "none": lambda: None,
                    "obj": lambda: pick({"a": 1}, [1]),
                }[key]()
            item["details"] = details
    return item


def test_the_compiled_path_gives_pythons_rows_and_errors() -> None:
    """_generic.c converts the common case; on thousands of random items, mixed valid and not, the
    rows and the errors must be exactly what the Python converter alone gives."""
    rnd = random.Random(11)
    compiled, python = Values(), Values()
    fast_rows = 0
    for _ in range(400):
        items = [_random_item(rnd) for _ in range(rnd.randint(1, 30))]
        for body in (orjson.dumps(items), *(orjson.dumps(item) for item in items)):  # whole, then one by one
            a = parse(body, "application/json", Shape.GENERIC, NOW, compiled)
            b = parse(body, "application/json", Shape.GENERIC, NOW, python, compiled=False)
            assert (a.rows, a.errors, a.items) == (b.rows, b.errors, b.items), body
            fast_rows += len(a.rows)
    assert fast_rows > 1000  # valid rows were among them, and went through the compiled path
    clean = orjson.dumps([{"message": "m", "timestamp": "2026-11-30T08:00:00.5Z", "level": "INFO",
                           "details": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "port": 80, "protocol": "tcp",
                                       "user": "u"}}] * 3)
    parse(clean, "", Shape.GENERIC, NOW, compiled)  # fills the caches
    from producer.ingest import _generic  # type: ignore[attr-defined]

    fast = _generic.rows(orjson.loads(clean), NOW, compiled.addresses, compiled.protocols)
    assert None not in fast and fast == parse(clean, "", Shape.GENERIC, NOW, python, compiled=False).rows
