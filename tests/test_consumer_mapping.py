"""The consumer's pure logic: Community ID, ECS and OCSF mappings, event ids, the sinks' file handling.

Records come the way the consumer meets them: kernel-layout records of every
kind the kernel writes (random values, every presence-flag combination, and
every protocol and malformed-frame case) encoded by the agent's own encoder in
both message shapes and decoded by the consumer's decoder.  The registry is an
in-memory fake here (pure logic); tests/test_consumer.py uses the real one.
"""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import communityid
import pyarrow.parquet as pq
import pytest

from producer.consumer.community_id import community_id
from producer.consumer.decoding import MessageDecoder
from producer.consumer.ecs import EcsFormatter
from producer.consumer.mapping import Origin, RawFormatter, event_id, wire_counts
from producer.consumer.ocsf import OcsfFormatter
from producer.consumer.sinks.ndjson import FileSink
from producer.consumer.sinks.parquet import ParquetSink, schema_for
from producer.errors import SinkError
from producer.records import Batch, RingMark
from producer.serialize.avro import frame_header
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder
from producer.serialize.encoder import Identity
from producer.serialize.schemas import AvroSchema
from tests.schema_checks import ecs_problems, leaves, ocsf_problems
from tests.test_columnar import CLOCK, _names, _protocol_records, random_records

DATA = Path(__file__).parent / "data"


class FakeRegistry:
    def __init__(self) -> None:
        self.texts = {1: AvroSchema.load("HeaderBatch").text, 2: AvroSchema.load("HeaderRecord").text,
                      3: (Path(__file__).parent.parent / "schemas/history/HeaderRecord.v1.avsc").read_text()}

    def schema_text(self, schema_id: int) -> str:
        return self.texts[schema_id]


def consumer_records(shape: str, n_random: int = 400) -> list[dict[str, Any]]:
    """Every kind of kernel record, through the agent's encoder and the consumer's decoder."""
    import numpy as np

    arr = np.concatenate([random_records(n_random, 5), _protocol_records()])
    names = _names()
    decoder = MessageDecoder(FakeRegistry())  # type: ignore[arg-type]
    if shape == "batch":
        enc = ColumnarBatchEncoder(AvroSchema.load("HeaderBatch"), 1, "t", Identity("host-1", "inst"), names, CLOCK,
                                   1_000_000)
        return [r for e in enc.encode(Batch("cap", arr, RingMark("c", len(arr)))) for r in decoder.records(e.payload)]
    enc2 = ColumnarRecordEncoder(AvroSchema.load("HeaderRecord"), 2, "t", Identity("host-1", "inst"), names, CLOCK)
    [entry] = enc2.encode(Batch("cap", arr, None))
    assert entry.offsets is not None
    bounds = [*entry.offsets, len(entry.payload)]
    return [r for a, b in zip(bounds, bounds[1:], strict=False) for r in decoder.records(entry.payload[a:b])]


ORIGIN = Origin("t", 0, 0)


# -- Community ID ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kw"), [("deflt", {}), ("seed1", {"seed": 1}), ("nob64", {"b64": False})])
def test_community_id_matches_every_published_baseline_vector(name: str, kw: dict[str, Any]) -> None:
    vectors = json.loads((DATA / "community_id" / "baseline" / f"baseline_{name}.json").read_text())
    assert len(vectors) == 23
    for v in vectors:  # for ICMP, sport is the type; dport the counterpart type or the code
        got = community_id(v["proto"], ipaddress.ip_address(v["saddr"]).packed,
                           ipaddress.ip_address(v["daddr"]).packed, v["sport"], v["dport"], **kw)
        assert got == v["communityid"], v


def test_community_id_agrees_with_the_reference_implementation_on_random_flows() -> None:
    rng = random.Random(11)
    ref = communityid.CommunityID()
    icmp_types = [0, 3, 5, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 30]
    icmp6_types = [1, 2, 3, 128, 129, 130, 131, 133, 134, 135, 136, 139, 140, 144, 145, 146]
    for _ in range(4000):
        v6 = rng.random() < 0.5
        size = 16 if v6 else 4
        src = bytes(rng.getrandbits(8) for _ in range(size))
        dst = src if rng.random() < 0.1 else bytes(rng.getrandbits(8) for _ in range(size))
        proto = rng.choice([6, 17, 132, 58 if v6 else 1, 47, 50])
        if proto in (1, 58):
            sport, dport = rng.choice(icmp6_types if v6 else icmp_types), rng.randrange(16)
        else:
            sport, dport = rng.randrange(65536), rng.randrange(65536)
            if rng.random() < 0.1:
                dport = sport
        ip = ipaddress.ip_address
        if proto in (6, 17, 132, 1, 58):
            want = ref.calc(communityid.FlowTuple(proto, str(ip(src)), str(ip(dst)), sport, dport))
        else:
            want = ref.calc(communityid.FlowTuple(proto, str(ip(src)), str(ip(dst))))
            sport = dport = None  # type: ignore[assignment]
        assert community_id(proto, src, dst, sport, dport) == want, (proto, ip(src), ip(dst), sport, dport)


# -- ECS and OCSF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["batch", "record"])
def test_ecs_events_of_every_record_kind_pass_the_ecs_field_list(shape: str) -> None:
    records = consumer_records(shape)
    events = EcsFormatter().events(records, ORIGIN)
    assert len(events) == len(records)
    for e in events:
        assert ecs_problems(e) == [], e
    transports = {e["network"].get("transport") for e in events}
    assert {"tcp", "udp", "icmp", "ipv6-icmp", "gre"} <= transports
    assert any("inner" in e["network"] for e in events) and any("vlan" in e["network"] for e in events)
    assert {e["network"]["direction"] for e in events} == {"ingress", "egress"}


@pytest.mark.parametrize("shape", ["batch", "record"])
def test_ocsf_events_of_every_record_kind_pass_the_class_definition(shape: str) -> None:
    records = consumer_records(shape)
    events = OcsfFormatter().events(records, ORIGIN)
    assert len(events) == len(records)
    for e in events:
        assert ocsf_problems(e) == [], e
    assert {e["connection_info"]["direction_id"] for e in events} == {1, 2}
    assert {e["connection_info"]["protocol_ver_id"] for e in events} == {0, 4, 6}


def test_the_checks_catch_what_they_are_for() -> None:
    """The validators are not vacuous: each kind of mistake is reported."""
    [record] = consumer_records("batch", n_random=1)[:1]
    ecs = EcsFormatter().events([record], ORIGIN)[0]
    assert any("not an ECS" in p for p in ecs_problems({**ecs, "source": {"ipaddr": "1.2.3.4"}}))
    assert any("valid long" in p for p in ecs_problems({**ecs, "network": {**ecs["network"], "bytes": "9"}}))
    assert any("array" in p for p in ecs_problems({**ecs, "event": {**ecs["event"], "category": "network"}}))
    assert any("allowed" in p for p in ecs_problems({**ecs, "event": {**ecs["event"], "kind": "packet"}}))
    ocsf = OcsfFormatter().events([record], ORIGIN)[0]
    assert any("required" in p for p in ocsf_problems({k: v for k, v in ocsf.items() if k != "time"}))
    assert any("enum" in p for p in ocsf_problems({**ocsf, "activity_id": 8, "type_uid": 400108}))
    assert any("type_uid" in p for p in ocsf_problems({**ocsf, "type_uid": 400105}))
    bad_port = {**ocsf, "src_endpoint": {"ip": "10.0.0.1", "port": 70000}}
    assert any("outside" in p for p in ocsf_problems(bad_port))
    assert any("not an attribute" in p for p in ocsf_problems({**ocsf, "vlan": 3}))
    no_device = {k: v for k, v in ocsf.items() if k != "metadata"}
    assert any("metadata" in p for p in ocsf_problems(no_device))


def test_event_ids_are_the_record_identity_in_both_shapes() -> None:
    batch, record = consumer_records("batch"), consumer_records("record")
    ids_b = [event_id(r, ORIGIN, i) for i, r in enumerate(batch)]
    ids_r = [event_id(r, Origin("other", 3, 9), 0) for r in record]
    assert ids_b == ids_r  # the same records, whatever the shape and wherever in Kafka
    assert len(set(ids_b)) == len(ids_b)


def test_version_1_records_take_their_id_from_their_place_in_kafka() -> None:
    import fastavro

    schema = fastavro.parse_schema(json.loads(FakeRegistry().texts[3]))
    datum = {k: v for k, v in consumer_records("record", 1)[0].items()
             if k in {f["name"] for f in schema["fields"]}}
    buf = __import__("io").BytesIO()
    fastavro.schemaless_writer(buf, schema, datum)
    [r] = MessageDecoder(FakeRegistry()).records(frame_header(3) + buf.getvalue())  # type: ignore[arg-type]
    assert r["capture_id"] is None
    a, b = event_id(r, Origin("t", 1, 5), 0), event_id(r, Origin("t", 1, 6), 0)
    assert a != b and a == event_id(r, Origin("t", 1, 5), 0)
    assert ecs_problems(EcsFormatter().events([r], Origin("t", 1, 5))[0]) == []


def test_counts_scale_by_sample_rate_and_segments() -> None:
    r = {"packet_length": 1500, "gso_segments": 4, "sample_rate": 10}
    assert wire_counts(r) == (15000, 40)
    assert wire_counts({"packet_length": 60, "gso_segments": 0, "sample_rate": 0}) == (60, 1)


def test_raw_events_keep_every_schema_field() -> None:
    record = consumer_records("batch", 1)[0]
    [event] = RawFormatter().events([record], ORIGIN)
    assert set(event) == set(record) | {"event_id", "community_id"}


# -- sinks ------------------------------------------------------------------------------------------

def test_file_sink_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, prefix="x", max_bytes=2000)
    events = [{"n": i, "pad": "y" * 50} for i in range(500)]
    for i in range(0, 500, 7):
        assert sink.write(events[i:i + 7]) == []
        sink.flush()  # the runner flushes before each commit; files rotate there
    sink.close()
    files = sink.files()
    assert len(files) > 10 and files[-1].name == "x.ndjson"
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert lines == events


def test_file_sink_keeps_only_the_newest_rotated_files(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, prefix="x", max_bytes=100, keep=3)
    for i in range(50):
        sink.write([{"n": i, "pad": "z" * 100}])
        sink.flush()
    sink.close()
    assert len(list(tmp_path.glob("x-*.ndjson"))) == 3


def test_file_sink_leaves_no_torn_line_when_the_disk_fills(tmp_path: Path) -> None:
    import errno

    sink = FileSink(tmp_path, prefix="x")
    sink.write([{"n": 0}])
    sink.flush()
    real = sink._file

    class Full:  # writes half of what it is given, then the disk is full
        def write(self, data: bytes) -> int:
            real.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    sink._file = Full()  # type: ignore[assignment]
    sink.write([{"n": 1, "pad": "p" * 100}])
    with pytest.raises(SinkError) as err:
        sink.flush()
    assert err.value.retriable and "No space left" in str(err.value)
    sink._file = real
    assert (tmp_path / "x.ndjson").read_text() == '{"n":0}\n'  # cut back to the last whole line
    sink.flush()  # the disk has room again: the kept buffer goes out once
    sink.close()
    assert [json.loads(line)["n"] for line in (tmp_path / "x.ndjson").read_text().splitlines()] == [0, 1]


def test_parquet_sink_partitions_and_commits_files_atomically(tmp_path: Path) -> None:
    fmt = EcsFormatter()
    records = consumer_records("batch")
    events = fmt.events(records, ORIGIN)
    sink = ParquetSink(tmp_path, fmt, fmt.partition, file_rows=300, row_group_rows=100)
    sink.write(events)
    assert sink.files_written == len(events) // 300  # files at file_rows, before any flush
    sink.flush()
    files = sorted(tmp_path.rglob("*.parquet"))
    assert not list(tmp_path.rglob("*.tmp"))
    dates = {e["@timestamp"][:10] for e in events}
    assert {f.parent.parent.name for f in files} == {f"dt={d}" for d in dates}
    assert {f.parent.name for f in files} == {"host=host-1"}
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == len(events)
    assert all(pq.ParquetFile(f).schema_arrow == schema_for(fmt) for f in files)
    assert max(pq.ParquetFile(f).metadata.num_row_groups for f in files) == 3


def test_each_format_has_one_parquet_schema_with_every_field() -> None:
    for fmt in (EcsFormatter(), OcsfFormatter(), RawFormatter()):
        names = set(leaves(fmt.events(consumer_records("batch", 50), ORIGIN)[0]))
        schema = schema_for(fmt)
        flat = {".".join(p) for p in _paths(schema)}
        assert names <= flat, names - flat


def _paths(schema: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import pyarrow as pa

    out = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out += _paths(list(f.type), (*prefix, f.name))
        else:
            out.append((*prefix, f.name))
    return out


# -- telemetry -----------------------------------------------------------------------------------------

def test_progress_line_and_metrics_show_rates_lag_and_dead_letters() -> None:
    import io

    from producer.consumer.telemetry import (
        ConsumerTelemetry,
        CStat,
        Poison,
        Progress,
        metrics_renderer,
        render_metrics,
    )

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tel = ConsumerTelemetry()
    out = Tty()
    progress = Progress(tel, out=out, interval_s=0.0)
    assert progress.enabled
    tel.add(CStat.EVENTS_WRITTEN, 1500)
    tel.add(CStat.MESSAGES_DEAD_LETTERED, 2)
    tel.dead_letter(Poison.BAD_MAGIC, "t[0]@3", "magic byte 1")
    tel.set_lag({0: 40, 3: 2})
    progress.tick(final=True)
    line = out.getvalue()
    assert line.startswith("\r1500 events (") and "lag 42 [p0:40 p3:2]" in line and "dead-lettered 2" in line
    text = render_metrics(metrics_renderer(tel)).decode()
    assert "hdrlog_consumer_events_written_total 1500.0" in text
    assert 'hdrlog_consumer_dead_letters_total{reason="bad_magic"} 1.0' in text
    assert 'hdrlog_consumer_dead_letters_total{reason="decode_error"} 0.0' in text
    assert 'hdrlog_consumer_lag_messages{partition="0"} 40.0' in text
    assert not Progress(tel, out=io.StringIO()).enabled  # not a terminal: no progress line


def test_a_foreign_schema_named_like_ours_is_poison_not_a_crash() -> None:
    import fastavro

    from producer.consumer.telemetry import Poison
    from producer.errors import PoisonMessage

    foreign = {"type": "record", "name": "HeaderBatch", "namespace": "someone.else",
               "fields": [{"name": "x", "type": "long"}]}
    reg = FakeRegistry()
    reg.texts[9] = json.dumps(foreign)
    buf = __import__("io").BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(foreign), {"x": 7})
    with pytest.raises(PoisonMessage) as err:
        MessageDecoder(reg).records(frame_header(9) + buf.getvalue())  # type: ignore[arg-type]
    assert err.value.reason == Poison.WRONG_SCHEMA
