"""The columnar path writes what the dict path writes: the same NDJSON bytes, the same Arrow table.

Records of every kind the kernel writes (random values, every presence-flag
combination, every protocol and malformed-frame case) are encoded by the
agent's encoder in both message shapes, read into columns by the compiled
reader, and mapped by the ECS field table (render.py); the dict path
(``ecs_event`` + orjson, ``pyarrow.Table.from_pylist``) is the reference.
The text columns are held to Python's own functions on edge cases, and the
C renderer must refuse inconsistent input instead of reading outside it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
from pathlib import Path

import fastavro
import numpy as np
import orjson
import pyarrow as pa
import pytest

from producer.consumer import _render  # type: ignore[attr-defined]
from producer.consumer.community_id import community_id
from producer.consumer.decoding import BATCH_FIELDS, MessageDecoder
from producer.consumer.ecs import ECS_TEMPLATE, EcsFormatter
from producer.consumer.mapping import Origin, Texts, event_id
from producer.consumer.reader import Columns, CompiledReader
from producer.consumer.render import text_array
from producer.consumer.sinks.base import Events
from producer.consumer.sinks.parquet import ParquetSink, schema_for
from producer.errors import PoisonMessage
from producer.records import Batch, RingMark
from producer.serialize.avro import frame_header
from producer.serialize.columnar import ColumnarBatchEncoder, ColumnarRecordEncoder
from producer.serialize.encoder import Identity
from producer.serialize.schemas import AvroSchema
from tests.test_columnar import CLOCK, _names, _protocol_records, random_records
from tests.test_consumer_mapping import FakeRegistry

ORIGIN = Origin("t", 0, 0)
#: a host name that needs every kind of JSON escape, and UTF-8 beyond ASCII
ODD_HOST = 'h"\\\n\t\x01\x1f\x7f\u2028é/'


def _messages(shape: str, seed: int, host: str = "host-1") -> list[bytes]:
    arr = np.concatenate([random_records(600, seed), _protocol_records()])
    if shape == "batch":
        enc = ColumnarBatchEncoder(AvroSchema.load("HeaderBatch"), 1, "t", Identity(host, "inst"), _names(), CLOCK,
                                   40_000)
        return [e.payload for e in enc.encode(Batch("cap", arr, RingMark("c", len(arr))))]
    enc2 = ColumnarRecordEncoder(AvroSchema.load("HeaderRecord"), 2, "t", Identity(host, "inst"), _names(), CLOCK)
    [entry] = enc2.encode(Batch("cap", arr, None))
    assert entry.offsets is not None
    bounds = [*entry.offsets, len(entry.payload)]
    return [entry.payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _columns(messages: list[bytes]) -> Columns:
    decoder = MessageDecoder(FakeRegistry())  # type: ignore[arg-type]
    frame = decoder.frame(messages[0])
    return decoder.columns(frame, messages)


@pytest.mark.parametrize("shape", ["batch", "record"])
@pytest.mark.parametrize("seed,host", [(0, "host-1"), (1, ODD_HOST), (2, "host-é")])
def test_ecs_block_writes_the_dict_paths_json_and_table(shape: str, seed: int, host: str) -> None:
    messages = _messages(shape, seed, host)
    cols = _columns(messages)
    decoder = MessageDecoder(FakeRegistry())  # type: ignore[arg-type]
    records = [r for m in messages for r in decoder.records(m)]
    assert cols.n == len(records) > 600
    assert len(cols.starts) == len(messages) + 1 and cols.starts[-1] == cols.n
    fmt = EcsFormatter()
    dicts = fmt.events(records, ORIGIN)
    block = fmt.block(cols)

    text, ends = block.ndjson()
    assert text == b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in dicts)
    assert ends.tolist() == np.cumsum([len(orjson.dumps(d)) + 1 for d in dicts]).tolist()
    assert block.batch.schema.equals(schema_for(fmt))
    assert pa.Table.from_batches([block.batch]).equals(pa.Table.from_pylist(dicts, schema=schema_for(fmt)))
    assert block.ids() == [d["event"]["id"] for d in dicts]
    assert block.dicts() == dicts
    partitions = block.partitions()
    assert [k for k, _ in partitions] == list(dict.fromkeys(fmt.partition(d) for d in dicts))
    assert sum(b.num_rows for _, b in partitions) == len(dicts)
    # a message's records, read back from the columns, are the decoder's
    assert [r for k in range(len(messages)) for r in cols.records(k)] == [
        {k: v for k, v in r.items() if k in cols.names} for r in records]


def test_events_mix_blocks_and_dicts_in_order() -> None:
    messages = _messages("batch", 3)
    cols = _columns(messages)
    block = EcsFormatter().block(cols)
    first = block.dicts()[:2]
    events = Events([first, block, []])
    assert len(events) == 2 + len(block)
    assert events.dicts() == first + block.dicts()
    assert events.ndjson() == b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in first) + \
        block.ndjson()[0]
    keyed = events.keyed_lines(lambda e: str(e["event"]["id"]))
    assert [k for k, _ in keyed] == [d["event"]["id"] for d in events.dicts()]
    assert [json.loads(v) for _, v in keyed] == events.dicts() and all(v.endswith(b"\n") for _, v in keyed)
    assert events.dates(lambda e: str(e["@timestamp"])[:10]) == [str(d["@timestamp"])[:10] for d in events.dicts()]


def test_what_only_the_dict_path_decides_is_refused_by_the_columnar_path() -> None:
    """Version 1 records (ids from their Kafka position), an address of 5 bytes."""
    reg = FakeRegistry()
    decoder = MessageDecoder(reg)  # type: ignore[arg-type]
    record = decoder.records(_messages("record", 4)[0])[0]
    v1 = fastavro.parse_schema(json.loads(reg.texts[3]))
    buf = __import__("io").BytesIO()
    fastavro.schemaless_writer(buf, v1, {k: v for k, v in record.items() if k in {f["name"] for f in v1["fields"]}})
    message = frame_header(3) + buf.getvalue()
    with pytest.raises(ValueError, match="capture_id"):
        EcsFormatter().block(decoder.columns(decoder.frame(message), [message]))

    v2 = fastavro.parse_schema(json.loads(reg.texts[2]))
    buf = __import__("io").BytesIO()
    fastavro.schemaless_writer(buf, v2, {**record, "src_ip": b"\x01" * 5, "ip_version": 4})
    message = frame_header(2) + buf.getvalue()
    with pytest.raises(ValueError, match="neither 4 nor 16"):
        EcsFormatter().block(decoder.columns(decoder.frame(message), [message]))


def _texts(parts: tuple[bytes, bytes, bytes], n: int) -> list[str | None]:
    return [v.as_py() for v in text_array(parts, n)]


def _spans(values: list[bytes | None]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    buf = b"".join(v or b"" for v in values)
    lens = np.array([len(v or b"") for v in values], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    present = np.array([v is not None for v in values], dtype=np.uint8)
    return buf, offs, lens, present


def test_addresses_are_written_as_pythons_ipaddress_writes_them() -> None:
    rng = random.Random(3)
    values: list[bytes | None] = [None, bytes(4), b"\xff" * 4, bytes(16)]
    for pattern in range(256):  # every arrangement of zero hextets (RFC 5952's "::" choice)
        values.append(b"".join(b"\0\0" if pattern >> k & 1 else rng.randbytes(1) + b"\x01" for k in range(8)))
    values += [b"\0" * 10 + b"\xff\xff" + rng.randbytes(4), rng.randbytes(16), rng.randbytes(4)]
    buf, offs, lens, present = _spans(values)
    got = _texts(_render.ip_texts(buf, offs, lens, present, len(values)), len(values))
    assert got == [None if v is None else str(ipaddress.ip_address(v)) for v in values]


def test_times_macs_strings_and_ids_match_the_dict_path() -> None:
    # every int64 of nanoseconds is a time in the years 1677-2262
    ns = np.array([0, 1, -1, 999_999_999, 1_795_000_000_123_456_789, -30_000_000_000_000_000, 2**63 - 1, -2**63],
                  dtype=np.int64)
    assert _texts(_render.time_texts(ns, len(ns)), len(ns)) == [Texts().time(int(t)) for t in ns]

    macs = [random.Random(k).randbytes(6) for k in range(20)]
    buf, offs, _lens, _present = _spans(list(macs))
    assert _texts(_render.mac_texts(buf, offs, 20, True, "-"), 20) == [m.hex("-").upper() for m in macs]
    assert _texts(_render.mac_texts(buf, offs, 20, False, ":"), 20) == [m.hex(":") for m in macs]

    strings: list[bytes | None] = [b"eth0", b"eth0", None, "é".encode(), b""]
    buf, offs, lens, present = _spans(strings)
    assert _texts(_render.strings(buf, offs, lens, present, 5), 5) == ["eth0", "eth0", None, "é", ""]
    for bad in (b"\xff", b"\xed\xa0\x80", b"\xc0\x80"):  # not UTF-8, a surrogate, an overlong form
        buf, offs, lens, present = _spans([b"ok", bad])
        with pytest.raises(ValueError, match="UTF-8"):
            _render.strings(buf, offs, lens, present, 2)

    hosts, caps = [b"h", ODD_HOST.encode()], [b"cap-1", b""]
    cpu, seq = np.array([0, 7], dtype=np.int64), np.array([2**62, -5], dtype=np.int64)
    hb, ho, hl, _ = _spans(list(hosts))
    cb, co, cl, _ = _spans(list(caps))
    got = _texts(_render.event_ids(hb + cb, ho, hl, co + len(hb), cl, cpu, seq, 2), 2)
    records = [{"host_id": h.decode(), "capture_id": c.decode(), "capture_cpu": int(p), "capture_seq": int(s)}
               for h, c, p, s in zip(hosts, caps, cpu, seq, strict=True)]
    assert got == [event_id(r, ORIGIN, 0) for r in records]
    key = "h\x00cap-1\x000\x00" + str(2**62)
    assert got[0] == hashlib.sha256(key.encode()).hexdigest()[:32]


def test_community_ids_match_the_python_implementation_on_random_flows() -> None:
    rng = random.Random(11)
    n = 4000
    protos = [rng.choice([1, 6, 17, 58, 132, 47, 1, 58]) for _ in range(n)]
    src: list[bytes | None] = []
    dst: list[bytes | None] = []
    a, b = [], []
    for _ in range(n):
        k = rng.choice([4, 16])
        s = rng.randbytes(k)
        src.append(s)
        dst.append(s if rng.random() < 0.1 else rng.randbytes(k))
        a.append(rng.choice([None, 0, 8, 0, 128, 129, 3, 135, rng.randrange(65536)]))
        b.append(rng.choice([None, 0, rng.randrange(65536), a[-1]]))
    src[0] = None
    dst[1] = b"\x01" * 16 if len(src[1] or b"") == 4 else b"\x01" * 4  # lengths differ: no Community ID
    sb, so, sl, sp = _spans(src)
    db, do, dl, dp = _spans(dst)
    ports = [np.array([v or 0 for v in x], dtype=np.int64) for x in (a, b)]
    has = [np.array([v is not None for v in x], dtype=np.uint8) for x in (a, b)]
    got = _texts(_render.community_ids(sb + db, np.array(protos, dtype=np.int64), np.ones(n, dtype=np.uint8),
                                       so, sl, sp, do + len(sb), dl, dp, ports[0], has[0], ports[1], has[1], n), n)
    want = [None if s is None or d is None or len(s) != len(d) else community_id(p, s, d, x, y)
            for p, s, d, x, y in zip(protos, src, dst, a, b, strict=True)]
    assert got == want


def test_the_renderer_refuses_inconsistent_input() -> None:
    cols = _columns(_messages("batch", 5)[:1])
    block = ECS_TEMPLATE.block(cols)
    t = ECS_TEMPLATE
    with pytest.raises(ValueError, match="rows"):  # a leaf shorter than the rows asked for
        _render.ndjson(t.plan, t.keys, [(1, None, b"\0" * 8)] * len(block._leaves), 2)
    bad_plan = np.array([3, 0, 999], dtype=np.int64).tobytes()  # a leaf that does not exist
    with pytest.raises(ValueError, match="malformed"):
        _render.ndjson(bad_plan, t.keys, [], 1)
    unbalanced = np.array([1, 0, 0], dtype=np.int64).tobytes()
    with pytest.raises(ValueError, match="unbalanced"):
        _render.ndjson(unbalanced, t.keys, [], 1)
    with pytest.raises(ValueError, match="outside the buffer"):
        _render.ip_texts(b"\0" * 4, np.array([2], dtype=np.int64), np.array([4], dtype=np.int64),
                         np.ones(1, dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="fewer than"):
        _render.time_texts(np.zeros(1, dtype=np.int64), 5)


def test_a_compiled_reader_reads_many_messages_as_one_by_one() -> None:
    for shape in ("batch", "record"):
        messages = _messages(shape, 6)
        schema = json.loads(AvroSchema.load("HeaderBatch" if shape == "batch" else "HeaderRecord").text)
        reader = CompiledReader.compile(schema)
        assert reader is not None
        carry = BATCH_FIELDS if shape == "batch" else ()
        whole = reader.columns([m[5:] for m in messages], carry)
        one_by_one = [r for m in messages for r in reader.columns([m[5:]], carry).records(0)]
        assert [r for k in range(len(messages)) for r in whole.records(k)] == one_by_one
        with pytest.raises(ValueError, match="(message|record) 1"):  # record shape: a record is a message
            reader.columns([messages[0][5:], messages[1][5:-1]], carry)


def test_parquet_writes_blocks_as_they_are_with_the_formats_hints(tmp_path: Path) -> None:
    """A Block's rows reach the file unchanged; dictionaries, delta encoding and statistics
    follow the format's ParquetHints."""
    import pyarrow.parquet as pq

    cols = _columns(_messages("batch", 7))
    block = EcsFormatter().block(cols)
    sink = ParquetSink(tmp_path, EcsFormatter(), EcsFormatter().partition)
    sink.write(Events([block]))
    sink.flush()
    [path] = tmp_path.rglob("*.parquet")
    f = pq.ParquetFile(path)
    assert f.read().equals(pa.Table.from_batches([block.batch]))
    meta = f.metadata.row_group(0)
    chunks = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert "PLAIN_DICTIONARY" not in chunks["event.id"].encodings and "DELTA_BINARY_PACKED" in \
        chunks["hdrlog.timestamp_ns"].encodings
    assert any("DICTIONARY" in e for e in chunks["source.ip"].encodings)
    assert chunks["@timestamp"].statistics.has_min_max and chunks["source.port"].statistics.has_min_max
    assert chunks["source.ip"].statistics is None or not chunks["source.ip"].statistics.has_min_max


def test_columns_never_share_the_readers_scratch() -> None:
    """The reader reuses its row-major scratch from call to call: columns are always copies (a
    block's arrays point into them until its sink has written it)."""
    messages = _messages("record", 8)
    decoder = MessageDecoder(FakeRegistry())  # type: ignore[arg-type]
    frame = decoder.frame(messages[0])
    first = decoder.columns(frame, messages[:1])  # one record: a transposed view would be contiguous
    before = first.vals.copy()
    decoder.columns(frame, messages[1:3])
    assert (first.vals == before).all()


def test_an_enum_index_beyond_the_symbols_is_refused_not_mapped() -> None:
    """A direction index the schema has no symbol for: poison for fastavro, so the reader refuses it
    (the dict path then dead-letters the message) instead of mapping it as some direction."""
    import io

    reg = FakeRegistry()
    decoder = MessageDecoder(reg)  # type: ignore[arg-type]
    record = decoder.records(_messages("record", 9)[0])[0]
    wider = json.loads(reg.texts[2])
    for f in wider["fields"]:
        if f["name"] == "direction":
            f["type"]["symbols"] = [*f["type"]["symbols"], "SIDEWAYS"]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(wider), {**record, "direction": "SIDEWAYS"})
    message = frame_header(2) + buf.getvalue()
    with pytest.raises(ValueError, match="direction has no symbol 2"):
        decoder.columns(decoder.frame(message), [message])
    with pytest.raises(PoisonMessage):
        decoder.records(message)


def test_the_flow_cache_stays_inside_its_memory() -> None:
    """Thousands of distinct flows fill every slot of the renderer's Community ID cache; Python's
    debug allocator (-X dev) aborts on a write past an allocation."""
    import subprocess
    import sys

    code = ("import numpy as np; from producer.consumer import _render; n = 5000; rng = np.random.default_rng(1); "
            "buf = rng.integers(0, 256, 8 * n, dtype=np.uint8).tobytes(); "
            "o = np.arange(0, 8 * n, 8, dtype=np.int64); l = np.full(n, 4, dtype=np.int64); "
            "one = np.ones(n, dtype=np.uint8); p = np.full(n, 6, dtype=np.int64); "
            "port = rng.integers(0, 65536, n, dtype=np.int64); "
            "_render.community_ids(buf, p, one, o, l, one, o + 4, l, one, port, one, port, one, n); print('ok')")
    r = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
