"""The consumer's mappings of LogEvents (producer/consumer/logs.py), and the Community ID join.

LogEvents come as the consumer meets them: parsed from gateway and generic
bodies by the agent's parser, encoded by its row encoder, decoded by the
consumer's decoder (an in-memory registry: pure logic; tests/test_ingest.py
runs the real path).  ECS events must use ECS 9.4 fields only, OCSF events must
pass the compiled HTTP Activity class (tests/data/ocsf/http_activity.json), and
a log event's Community ID must equal that of the packets of its connection.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from producer.consumer.cim import CimFormatter
from producer.consumer.decoding import LOG_SCHEMA, MessageDecoder
from producer.consumer.ecs import EcsFormatter
from producer.consumer.logs import log_event_id
from producer.consumer.mapping import Origin, RawFormatter, sample_records
from producer.consumer.ocsf import OcsfFormatter
from producer.consumer.sinks.base import Events, LogPart
from producer.consumer.sinks.parquet import ParquetSink
from producer.errors import PoisonMessage
from producer.ingest.parse import Shape, parse
from producer.serialize.rows import RowEncoder
from producer.serialize.schemas import AvroSchema
from tests.schema_checks import ecs_problems, ocsf_problems
from tests.test_ingest_parse import APISIX_DEFAULT, APISIX_FORMAT, KONG

NOW = 1_796_025_600 * 10**9
SCHEMA_ID = 4


class FakeRegistry:
    def __init__(self) -> None:
        self.texts = {SCHEMA_ID: AvroSchema.load("LogEvent").text, 1: AvroSchema.load("HeaderBatch").text}

    def schema_text(self, schema_id: int) -> str:
        return self.texts[schema_id]


def log_records(bodies: list[tuple[Any, Shape]]) -> list[dict[str, Any]]:
    """Bodies through the agent's parser and encoder, then the consumer's decoder."""
    enc = RowEncoder(AvroSchema.load("LogEvent"), SCHEMA_ID, {"host_id": "node-1", "agent_instance": "inst-1"})
    rows = []
    for body, shape in bodies:
        parsed = parse(orjson.dumps(body), "application/json", shape, NOW)
        assert parsed.errors == []
        rows += parsed.rows
    payload, offsets = enc.encode(rows, seq_base=100)
    decoder = MessageDecoder(FakeRegistry())  # type: ignore[arg-type]
    out = []
    for a, b in zip(offsets, (*offsets[1:], len(payload)), strict=True):
        name, records = decoder.message(payload[a:b])
        assert name == LOG_SCHEMA
        out += records
    return out


GENERIC = {"message": "login failed", "level": "WARN", "timestamp": "2026-11-30T08:00:01.5Z",
           "details": {"src_ip": "10.0.0.5", "dst_ip": "10.0.0.2", "src_port": 51234, "dst_port": 8000,
                       "protocol": "tcp", "user": "alice", "dotted.key": 1}}
ALL = [(KONG, Shape.KONG), (APISIX_DEFAULT, Shape.APISIX), (APISIX_FORMAT, Shape.APISIX), (GENERIC, Shape.GENERIC),
       ({"message": "bare"}, Shape.GENERIC), ({"message": "v6", "details": {"src_ip": "fd00::1", "dst_ip": "fd00::2",
                                                                          "protocol": "udp"}}, Shape.GENERIC)]


def test_ecs_log_events_use_ecs_fields_only() -> None:
    events = EcsFormatter().log_events(log_records(ALL))
    for e in events:
        assert ecs_problems(e) == [], e
    kong, generic, bare = events[0], events[3], events[4]
    assert kong["event"]["dataset"] == "hdrlog.logs" and kong["event"]["category"] == ["web"]
    assert kong["http"] == {"request": {"method": "GET", "bytes": 86}, "response": {"status_code": 200, "bytes": 934}}
    assert kong["url"]["original"] == "http://api.local:8000/orders/7?x=1" and kong["event"]["duration"] == 18_000_000
    assert kong["source"] == {"ip": "10.0.0.5", "port": 51234} and kong["network"]["transport"] == "tcp"
    assert generic["log"]["level"] == "warn" and generic["labels"] == {"user": "alice", "dotted_key": "1"}
    assert generic["@timestamp"] == "2026-11-30T08:00:01.500000000Z" and generic["event"]["type"] == ["info"]
    assert "source" not in bare and "network" not in bare and bare["message"] == "bare"
    assert kong["event"]["id"] == log_event_id({"host_id": "node-1", "agent_instance": "inst-1", "sequence": 100})
    assert len({e["event"]["id"] for e in events}) == len(events)


def test_ocsf_log_events_pass_the_http_activity_class() -> None:
    events = OcsfFormatter().log_events(log_records(ALL))
    for e in events[:3]:  # the gateways'
        assert ocsf_problems(e, "http_activity") == [], e
    kong, apisix = events[0], events[1]
    assert (kong["class_uid"], kong["activity_id"], kong["type_uid"]) == (4002, 3, 400203)
    assert (apisix["activity_id"], apisix["http_response"]) == (6, {"code": 201, "length": 77})
    assert kong["http_request"]["url"] == {"url_string": "http://api.local:8000/orders/7?x=1"}
    assert events[2]["http_request"]["url"] == {"path": "/orders", "query_string": "id=3"}
    # an event without any HTTP field is class 4002, activity Unknown, with neither request nor response
    for e in events[3:]:
        assert ocsf_problems(e, "http_activity") == ["event: needs at least one of ['http_request', 'http_response']"]
        assert e["activity_id"] == 0
    assert events[3]["connection_info"]["community_uid"].startswith("1:")


def test_the_log_event_and_the_packets_of_its_connection_share_the_community_id() -> None:
    # the packets of the Kong request's connection, both directions, as header records
    base = sample_records()[0]
    client, server = socket.inet_aton("10.0.0.5"), socket.inet_aton("10.0.0.2")
    records = [{**base, "src_ip": client, "dst_ip": server, "src_port": 51234, "dst_port": 8000, "ip_proto": 6,
                "icmp_type": None, "icmp_code": None},
               {**base, "src_ip": server, "dst_ip": client, "src_port": 8000, "dst_port": 51234, "ip_proto": 6,
                "icmp_type": None, "icmp_code": None, "direction": "EGRESS"}]
    logs = log_records([(KONG, Shape.KONG)])
    ecs, ocsf, cim, raw = EcsFormatter(), OcsfFormatter(), CimFormatter(), RawFormatter()
    packets = {e["network"]["community_id"] for e in ecs.events(records, Origin("t", 0, 0))}
    assert len(packets) == 1
    cid = packets.pop()
    assert ecs.log_events(logs)[0]["network"]["community_id"] == cid
    assert ocsf.log_events(logs)[0]["connection_info"]["community_uid"] == cid
    assert cim.log_events(logs)[0]["flow_id"] == cid
    assert raw.log_events(logs)[0]["community_id"] == cid


def test_raw_and_cim_log_events() -> None:
    [raw] = RawFormatter().log_events(log_records([(GENERIC, Shape.GENERIC)]))
    assert (raw["src_ip"], raw["source"], raw["attributes"]) == ("10.0.0.5", "GENERIC",
                                                                 {"user": "alice", "dotted.key": "1"})
    [cim] = CimFormatter().log_events(log_records([(KONG, Shape.KONG)]))
    assert (cim["src"], cim["dest_port"], cim["http_method"], cim["status"], cim["response_time"]) == \
        ("10.0.0.5", 8000, "GET", 200, 18.0)


def test_header_records_decoding_refuses_a_log_event() -> None:
    enc = RowEncoder(AvroSchema.load("LogEvent"), SCHEMA_ID, {"host_id": "h", "agent_instance": "i"})
    payload, _ = enc.encode([parse(b'{"message": "m"}', "", Shape.GENERIC, NOW).rows[0]])
    with pytest.raises(PoisonMessage, match="a LogEvent"):
        MessageDecoder(FakeRegistry()).records(payload)  # type: ignore[arg-type]


def test_parquet_keeps_log_events_in_their_own_dataset(tmp_path: Path) -> None:
    fmt = EcsFormatter()
    sink = ParquetSink(tmp_path, fmt, fmt.partition)
    sink.write(Events([LogPart(fmt.log_events(log_records(ALL)))]))
    sink.flush()
    files = sorted(tmp_path.rglob("*.parquet"))
    assert files and all(f.relative_to(tmp_path).parts[0] == "logs" for f in files)
    table = pq.read_table(tmp_path / "logs", partitioning=None)
    assert table.num_rows == len(ALL)
    assert sorted(table.column("message").to_pylist())[0] == "GET http://api.local:8000/orders/7?x=1 200"
