"""``hdrlog consume`` against the real kernel, broker and registry, on what a real agent wrote.

Two agent runs on a veth pair fill a topic in each message shape (pings over
IPv4 and IPv6, a TCP exchange, a UDP flood).  The consumer runs as users run
it, as ``hdrlog consume`` processes, and every test reconciles exactly: the
expected event ids are computed from the topic itself (decoded independently
of the consumer), and the sink must hold exactly those.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import httpx2
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from producer.consumer.deadletter import dlq_topic
from producer.consumer.mapping import prune
from producer.serialize.avro import frame_header
from producer.serialize.registry import Registry
from producer.serialize.schemas import AvroSchema
from tests.conftest import HDRLOG, ROOT, AgentProcess, _veth, expand, read_topic, summary_of, wait_for
from tests.schema_checks import ecs_problems, ocsf_problems

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

N_FLOOD = 40_000


def expected_ids(registry_url: str, messages: list[Any]) -> list[str]:
    """The event id of every record in ``messages``, in order, by the README's formula, decoded here with
    fastavro alone (not the consumer's decoder): a message is 0x00, a 4-byte big-endian schema id, then
    Avro; a HeaderBatch's records take its host_id and capture_id. The id is the first 32 hex digits of
    SHA-256 over host_id NUL capture_id NUL capture_cpu NUL capture_seq."""
    schemas: dict[int, Any] = {}
    ids = []
    for m in messages:
        value = m.value()
        assert value[0] == 0, value[:5]
        sid = int.from_bytes(value[1:5], "big")
        if sid not in schemas:
            text = httpx2.get(f"{registry_url}/schemas/ids/{sid}", timeout=10).json()["schema"]
            schemas[sid] = fastavro.parse_schema(json.loads(text))
        datum = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[sid])
        if schemas[sid]["name"].endswith("HeaderBatch"):
            records = [{"host_id": datum["host_id"], "capture_id": datum["capture_id"], **r} for r in datum["records"]]
        else:
            records = [datum]
        for r in records:
            key = f"{r['host_id']}\x00{r['capture_id']}\x00{r['capture_cpu']}\x00{r['capture_seq']}"
            ids.append(hashlib.sha256(key.encode()).hexdigest()[:32])
    return ids


class Topic:
    def __init__(self, name: str, messages: list[Any], records: list[dict[str, Any]], delivered: int,
                 ids: list[str]) -> None:
        self.name = name
        self.messages = messages
        self.records = records
        self.delivered = delivered
        self.ids = ids


def _agent_run(stack: Any, net: Any, shape: str, flood: int, state: Path) -> Topic:
    topic = f"hdrlog.test.consume.{shape}.{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [*HDRLOG, "--log-format", "json", "agent", "--iface", net.host_if, "--shape", shape, "--topic", topic,
         "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry", stack.registry_url,
         "--host-id", f"consume-test-{shape}", "--state-dir", str(state), "--listen", "off", "--partitions", "1"],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    agent = AgentProcess(proc, net.host_if)
    try:
        agent.wait_attached()
        net.exec(["ping", "-c", "5", "-i", "0.02", net.host_ip])
        net.exec(["ping", "-6", "-c", "5", "-i", "0.02", net.host_ip6])
        net.exec(["/usr/bin/python3", "-c", "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 9), 2)"
                  "\nexcept OSError: pass", net.host_ip])
        out, err = net.udp(net.host_ip, 9, count=flood, sport=40001).communicate(timeout=120)
        assert int(out) == flood, err
    finally:
        _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    a = summary_of(err)["agent"]
    assert a["delivered"] == a["drained"] > flood
    msgs = read_topic(stack.bootstrap_servers, topic)
    records = expand(stack.registry_url, msgs)
    assert len(records) == a["delivered"]
    ids = expected_ids(stack.registry_url, msgs)
    assert len(ids) == len(set(ids)) == a["delivered"]
    return Topic(topic, msgs, records, a["delivered"], ids)


@pytest.fixture(scope="module")
def topics(stack: Any, root_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Topic]]:
    gen = _veth(quiet=False)
    net = next(gen)
    try:
        yield {"batch": _agent_run(stack, net, "batch", N_FLOOD, tmp_path_factory.mktemp("state")),
               "record": _agent_run(stack, net, "record", N_FLOOD, tmp_path_factory.mktemp("state"))}
    finally:
        gen.close()


class ConsumerProcess:
    def __init__(self, stack: Any, topic: str, *args: str, group: str | None = None) -> None:
        self.group = group or f"test-{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen(
            [*HDRLOG, "--log-format", "json", "consume", "--topic", topic, "--group", self.group,
             "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry", stack.registry_url,
             "--from-beginning", *args],
            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._err: list[str] = []
        self._out: list[str] = []
        self._threads = [threading.Thread(target=lambda p, into: into.extend(p), args=(pipe, into), daemon=True)
                         for pipe, into in ((self.proc.stderr, self._err), (self.proc.stdout, self._out))]
        for t in self._threads:
            t.start()

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def metrics_url(self) -> str:
        def found() -> str | None:
            m = re.search(r"on (http://\S+?)\"", self.stderr)
            assert self.proc.poll() is None, self.stderr
            return m.group(1) + "/metrics" if m else None
        return str(wait_for(found, 60, "the consumer's metrics server"))

    def counter(self, url: str, name: str) -> float:
        text = httpx2.get(url, timeout=5).text
        m = re.search(rf"^hdrlog_consumer_{name}_total (\S+)$", text, re.M)
        assert m, text
        return float(m.group(1))

    def _reap(self) -> None:
        for t in self._threads:
            t.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def wait(self, timeout: float = 300) -> dict[str, int]:
        self.proc.wait(timeout)
        self._reap()
        assert self.proc.returncode == 0, self.stderr
        for line in reversed(self._err):
            if line.startswith('{"summary"'):
                return dict(json.loads(line)["summary"])
        raise AssertionError(f"no summary:\n{self.stderr}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(120)
        self._reap()


def ndjson(directory: Path, *, torn_tails: int = 0) -> list[dict[str, Any]]:
    """Every line of the directory's NDJSON files; ``torn_tails``: how many files may end in a partial line
    (a consumer SIGKILLed mid-write leaves one: it was not committed, so it is written again)."""
    out: list[dict[str, Any]] = []
    torn = 0
    for f in sorted(directory.glob("*.ndjson")):
        text = f.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            torn += 1
            lines.pop()
        out += [json.loads(line) for line in lines]
    assert torn <= torn_tails, f"{torn} files end in a partial line"
    return out


def ids_of(events: list[dict[str, Any]], fmt: str) -> list[str]:
    return [e["event"]["id"] if fmt == "ecs" else e["metadata"]["uid"] if fmt == "ocsf" else e["event_id"]
            for e in events]


@pytest.mark.parametrize(("shape", "fmt"), [("batch", "ecs"), ("record", "ecs"), ("batch", "ocsf"),
                                            ("record", "ocsf")])
def test_every_record_the_agent_delivered_becomes_one_valid_event(topics: dict[str, Topic], stack: Any,
                                                                  tmp_path: Path, shape: str, fmt: str) -> None:
    t = topics[shape]
    c = ConsumerProcess(stack, t.name, "--format", fmt, "--sink", f"file:{tmp_path}", "--idle-timeout", "3")
    summary = c.wait()
    events = ndjson(tmp_path)
    assert summary["events_written"] == summary["records_decoded"] == len(events) == t.delivered
    assert summary["messages_read"] == summary["messages_written"] == len(t.messages)
    assert summary["messages_dead_lettered"] == 0
    assert summary["columnar_fallbacks"] == 0  # ECS maps every run of real agent output from columns
    assert sorted(ids_of(events, fmt)) == sorted(t.ids) and len(set(t.ids)) == len(t.ids)
    check = ecs_problems if fmt == "ecs" else ocsf_problems
    problems = Counter(p for e in events for p in check(e))
    assert not problems, problems.most_common(5)
    # the known traffic is there, mapped: pings both ways, ICMPv6, the TCP SYN, the UDP flood
    if fmt == "ecs":
        kinds = Counter((e["network"].get("transport"), e["network"]["direction"], e["hdrlog"].get("icmp", {}).get(
            "type")) for e in events)
        assert kinds[("udp", "ingress", None)] == N_FLOOD
        assert kinds[("icmp", "ingress", 8)] == kinds[("icmp", "egress", 0)] == 5  # echo request, reply
        assert kinds[("ipv6-icmp", "ingress", 128)] == kinds[("ipv6-icmp", "egress", 129)] == 5
        assert kinds[("tcp", "ingress", None)] >= 1
        pings = {e["network"]["community_id"] for e in events if e["hdrlog"].get("icmp", {}).get("type") in (0, 8)}
        assert len(pings) == 1  # a request and its reply share the Community ID


def test_parquet_holds_the_same_rows_as_ndjson(topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    t = topics["batch"]
    lake, files = tmp_path / "lake", tmp_path / "files"
    a = ConsumerProcess(stack, t.name, "--format", "ecs", "--sink", f"parquet:{lake}", "--idle-timeout", "3",
                        "--parquet-file-rows", "16384")
    b = ConsumerProcess(stack, t.name, "--format", "ecs", "--sink", f"file:{files}", "--idle-timeout", "3")
    assert a.wait()["events_written"] == b.wait()["events_written"] == t.delivered
    parts = sorted(lake.rglob("*"))
    assert not [p for p in parts if p.name.endswith(".tmp")]
    parquet_files = [p for p in parts if p.suffix == ".parquet"]
    assert parquet_files and all(re.fullmatch(r"dt=\d{4}-\d\d-\d\d/host=consume-test-batch/part-[0-9a-f]{32}\.parquet",
                                              str(p.relative_to(lake))) for p in parquet_files), parts
    con = duckdb.connect()
    rel = con.sql(f"select * from read_parquet('{lake}/**/*.parquet', hive_partitioning = false)")
    rows = [prune(dict(zip(rel.columns, row, strict=True))) for row in rel.fetchall()]
    from_ndjson = ndjson(files)
    assert len(rows) == len(from_ndjson) == t.delivered
    key = lambda e: e["event"]["id"]  # noqa: E731
    assert sorted(rows, key=key) == sorted(from_ndjson, key=key)
    # and a lake query by partition and field works
    [(n, hosts)] = con.sql(f"select count(*), count(distinct host) from read_parquet('{lake}/**/*.parquet', "
                           "hive_partitioning = true) where network.transport = 'udp'").fetchall()
    assert (n, hosts) == (N_FLOOD, 1)


def _seed(stack: Any, topic: str, values: list[tuple[bytes, bytes]], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    from confluent_kafka.cimpl import NewTopic

    admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result(30)
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True})
    for i, (key, value) in enumerate(values):
        p.produce(topic, key=key, value=value, partition=i % partitions)
    assert p.flush(30) == 0


def test_poison_messages_go_to_the_dead_letter_topic_and_the_rest_to_the_sink(
        topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    import io

    import fastavro

    t = topics["record"]
    good = [m for m in t.messages[:5]]
    with Registry(stack.registry_url) as registry:
        stats_id = registry.register("hdrlog.test.poison-stats-value", AvroSchema.load("AgentStats").text)
        record_schema = AvroSchema.load("HeaderRecord")
        record_id = registry.register(f"{t.name}-value", record_schema.text)
    datum = dict(t.records[0])
    datum = {k: v for k, v in datum.items() if not k.startswith("_")}
    datum["src_ip"] = b"\x0a\x00\x00\x01\x00"  # decodes (Avro bytes), but is no IP address: a mapping error
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(record_schema.text)), datum)
    body = good[0].value()
    poison = {
        "bad_magic": b"\x01" + body[1:],
        "unknown_schema": frame_header(999_999_999) + body[5:],
        "decode_error": body[:5] + body[5:12],  # truncated
        "wrong_schema": frame_header(stats_id) + b"\x00" * 8,
        "mapping_error": frame_header(record_id) + buf.getvalue(),
    }
    values: list[tuple[bytes, bytes]] = []
    for i, value in enumerate(poison.values()):
        values += [(good[i].key(), good[i].value()), (b"k", value)]
    topic = f"hdrlog.test.poison.{uuid.uuid4().hex[:8]}"
    _seed(stack, topic, values)
    c = ConsumerProcess(stack, topic, "--format", "ecs", "--sink", f"file:{tmp_path}", "--idle-timeout", "3")
    summary = c.wait()
    events = ndjson(tmp_path)
    assert [e["event"]["id"] for e in events] == t.ids[:5]  # every good record, in order
    assert summary["messages_dead_lettered"] == 5 and summary["messages_written"] == 5
    assert all(summary[f"dead_letter_{r}"] == 1 for r in poison)
    # the decode and mapping errors sat in runs of good messages: the columnar path refused those runs
    # and the dict path took them message by message (how many runs depends on consume()'s batches)
    assert summary["columnar_fallbacks"] >= 1
    dead = read_topic(stack.bootstrap_servers, dlq_topic(topic))
    assert len(dead) == 5
    for m, (reason, value) in zip(dead, poison.items(), strict=True):
        h = {k: v.decode() for k, v in m.headers()}
        assert m.value() == value and h["hdrlog.errors.reason"] == reason
        assert h["__connect.errors.topic"] == topic and h["__connect.errors.partition"] == "0"
        assert int(h["__connect.errors.offset"]) == 2 * list(poison).index(reason) + 1
        assert h["__connect.errors.connector.name"] == c.group and h["__connect.errors.exception.message"]
        assert h["__connect.errors.stage"] == ("TRANSFORMATION" if reason == "mapping_error" else "VALUE_CONVERTER")


def test_a_wrong_registry_path_stops_the_consumer_at_start(topics: dict[str, Topic], stack: Any) -> None:
    from tests.conftest import run_hdrlog

    wrong = stack.registry_url.replace("/apis/ccompat/v7", "/apis")
    res = run_hdrlog("consume", "--topic", topics["record"].name, "--bootstrap-servers", stack.bootstrap_servers,
                     "--schema-registry", wrong, "--from-beginning", "--idle-timeout", "3", "--group",
                     f"test-{uuid.uuid4().hex[:8]}")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1] == (
        f"hdrlog: error: {wrong} is not a Confluent-compatible schema registry API (no /schemas/types; "
        "for Apicurio the URL ends in /apis/ccompat/v7)")


def test_metrics_off_loopback_need_the_bearer_token(topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    """``--listen`` on an address other hosts reach is refused without ``telemetry.token_file``; with it,
    /metrics answers 401 without the token and 200 with it."""
    from tests.conftest import run_hdrlog

    base = ("consume", "--topic", topics["record"].name, "--bootstrap-servers", stack.bootstrap_servers,
            "--schema-registry", stack.registry_url, "--idle-timeout", "3", "--listen", "0.0.0.0:0")
    res = run_hdrlog(*base)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1] == (
        "hdrlog: error: invalid value for --listen: 0.0.0.0 is reachable from other hosts: set "
        "telemetry.token_file too (anyone who reaches it could read the consumer's metrics)")
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    config = tmp_path / "consumer.toml"
    config.write_text(f'[telemetry]\ntoken_file = "{token}"\n')
    c = ConsumerProcess(stack, topics["record"].name, "--config", str(config), "--listen", "0.0.0.0:0",
                        "--sink", f"file:{tmp_path / 'out'}")
    try:
        url = c.metrics_url()
        assert httpx2.get(url, timeout=5).status_code == 401
        ok = httpx2.get(url, timeout=5, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and "hdrlog_consumer_" in ok.text
    finally:
        c.kill(signal.SIGTERM)
    assert "s3cret-token" not in c.stderr


def test_sigkill_mid_stream_then_restart_leaves_one_document_per_record(
        topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    t = topics["record"]  # a message per record: many consume() rounds, commits between them
    config = tmp_path / "consumer.toml"  # the restarted member waits for the killed one's session to end
    config.write_text('[kafka.properties]\n"session.timeout.ms" = "6000"\n')
    args = ("--config", str(config), "--format", "ecs", "--sink", f"file:{tmp_path}", "--commit-interval", "0.2")
    first = ConsumerProcess(stack, t.name, *args, "--listen", "127.0.0.1:0")
    url = first.metrics_url()
    wait_for(lambda: first.counter(url, "commits") >= 1, 120, "a first commit")
    first.kill(signal.SIGKILL)
    before = len(ndjson(tmp_path, torn_tails=1))
    assert 0 < before < t.delivered, "the kill must land mid-stream"
    second = ConsumerProcess(stack, t.name, *args, "--idle-timeout", "3", group=first.group)
    second.wait()
    ids = Counter(e["event"]["id"] for e in ndjson(tmp_path, torn_tails=1))  # (the killed one's tail stays)
    assert set(ids) == set(t.ids)  # every record at least once, keyed by id one document each
    duplicates = sum(ids.values()) - len(ids)
    assert duplicates < before  # the committed part was not read again


def test_sigterm_commits_what_was_written(topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    t = topics["record"]
    args = ("--format", "raw", "--sink", f"file:{tmp_path}", "--commit-interval", "30")
    first = ConsumerProcess(stack, t.name, *args, "--listen", "127.0.0.1:0")
    url = first.metrics_url()
    # read (not yet flushed: the commit interval is long), then SIGTERM: the stop flushes and commits
    wait_for(lambda: first.counter(url, "messages_read") >= 1000, 120, "a thousand messages read")
    first.kill(signal.SIGTERM)
    assert first.proc.returncode == 0, first.stderr
    written = len(ndjson(tmp_path))
    assert 0 < written < t.delivered
    second = ConsumerProcess(stack, t.name, *args, "--idle-timeout", "3", group=first.group)
    second.wait()
    ids = [e["event_id"] for e in ndjson(tmp_path)]
    assert len(ids) == len(set(ids)) == t.delivered  # nothing written twice, nothing missing


def test_two_group_members_split_the_partitions_and_deliver_each_record_once(
        topics: dict[str, Topic], stack: Any, tmp_path: Path) -> None:
    t = topics["batch"]
    topic = f"hdrlog.test.group.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    from confluent_kafka.cimpl import NewTopic

    admin.create_topics([NewTopic(topic, num_partitions=6)])[topic].result(30)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    members = [ConsumerProcess(stack, topic, "--format", "raw", "--sink", f"file:{tmp_path / str(i)}",
                               "--idle-timeout", "15", group=group) for i in range(2)]

    def assigned() -> bool:
        desc = admin.describe_consumer_groups([group])[group].result(10)
        return len(desc.members) == 2 and all(m.assignment.topic_partitions for m in desc.members)

    wait_for(assigned, 120, "both members to be assigned partitions")
    desc = admin.describe_consumer_groups([group])[group].result(10)
    split = [sorted(tp.partition for tp in m.assignment.topic_partitions) for m in desc.members]
    assert sorted(p for s in split for p in s) == list(range(6)) and all(split)
    p = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True})
    for i, m in enumerate(t.messages):
        p.produce(topic, key=m.key(), value=m.value(), partition=i % 6)
    assert p.flush(30) == 0
    summaries = [m.wait() for m in members]
    per_member = [ndjson(tmp_path / str(i)) for i in range(2)]
    assert all(per_member) and all(s["events_written"] == len(e) for s, e in zip(summaries, per_member, strict=True))
    ids = [e["event_id"] for events in per_member for e in events]
    assert len(ids) == len(set(ids)) == t.delivered and set(ids) == set(t.ids)



def _subset(stack: Any, t: Topic, n: int, tag: str) -> tuple[str, list[str]]:
    """A new topic holding the first ``n`` messages of ``t`` (record shape: one record each), and their ids."""
    topic = f"hdrlog.test.{tag}.{uuid.uuid4().hex[:8]}"
    _seed(stack, topic, [(m.key(), m.value()) for m in t.messages[:n]])
    assert len(t.messages) == len(t.records)
    return topic, t.ids[:n]


def test_bulk_sink_indexes_each_record_once_in_opensearch_even_after_a_replay(
        topics: dict[str, Topic], stack: Any, opensearch: str) -> None:
    topic, ids = _subset(stack, topics["record"], 2000, "bulk")
    name = f"hdrlog-ecs-test-{uuid.uuid4().hex[:8]}"
    template = json.loads((ROOT / "deploy" / "opensearch" / "hdrlog-ecs-template.json").read_text())
    template["index_patterns"] = [f"{name}-*"]
    httpx2.put(f"{opensearch}/_index_template/{name}", json=template, timeout=30).raise_for_status()
    for _ in range(2):  # the second run is a replay (a new group reads everything again)
        s = ConsumerProcess(stack, topic, "--format", "ecs", "--sink", f"opensearch:{opensearch}",
                            "--index", name + "-{date}", "--idle-timeout", "3").wait()
        assert s["events_written"] == len(ids) and s["records_dead_lettered"] == s["messages_dead_lettered"] == 0
    httpx2.post(f"{opensearch}/{name}-*/_refresh", timeout=30).raise_for_status()
    assert httpx2.get(f"{opensearch}/{name}-*/_count", timeout=30).json()["count"] == len(ids)
    found = httpx2.post(f"{opensearch}/{name}-*/_search", timeout=30, json={
        "size": 0, "track_total_hits": True, "query": {"ids": {"values": ids}}}).json()
    assert found["hits"]["total"]["value"] == len(ids)  # every record, by its event id, once
    one = httpx2.post(f"{opensearch}/{name}-*/_search", timeout=30,
                      json={"query": {"term": {"event.id": ids[7]}}}).json()["hits"]["hits"]
    assert [h["_id"] for h in one] == [ids[7]]
    mapping = httpx2.get(f"{opensearch}/{name}-*/_mapping", timeout=30).json()
    props = next(iter(mapping.values()))["mappings"]["properties"]
    assert props["source"]["properties"]["ip"]["type"] == "ip"
    assert props["network"]["properties"]["community_id"]["type"] == "keyword"


def _struct_fields(line: str) -> dict[str, str]:
    """Kafka Connect's ``Struct{a=1,b=x,...}`` (FileStreamSink writes toString) -> {field: text}; nulls are absent."""
    assert line.startswith("Struct{") and line.endswith("}"), line
    return dict(part.split("=", 1) for part in re.split(r",(?=\w+=)", line[len("Struct{"):-1]))


def _connect_text(value: Any) -> str:
    if isinstance(value, bytes):
        return f"java.nio.HeapByteBuffer[pos=0 lim={len(value)} cap={len(value)}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def test_kafka_connect_reads_what_the_agent_delivered_field_by_field(
        topics: dict[str, Topic], stack: Any, connect: str, tmp_path: Path) -> None:
    from producer.devstack.connect import connector_config

    t = topics["record"]
    n = 3000
    topic, _ids = _subset(stack, t, n, "connect")
    out = tmp_path / "connect-sink.txt"
    cfg = connector_config(topic=topic, file=str(out), registry_url=stack.registry_url,
                           name=f"hdrlog-test-{uuid.uuid4().hex[:8]}")
    r = httpx2.post(f"{connect}/connectors", json=cfg, timeout=30)
    assert r.status_code == 201, r.text
    try:
        def lines() -> list[str] | None:
            status = httpx2.get(f"{connect}/connectors/{cfg['name']}/status", timeout=10).json()
            assert all(task["state"] != "FAILED" for task in status.get("tasks", [])), status
            got = out.read_text().splitlines() if out.exists() else []
            return got if len(got) >= n else None
        got = wait_for(lines, 180, "Kafka Connect to write every record")
    finally:
        httpx2.delete(f"{connect}/connectors/{cfg['name']}", timeout=30)
    assert len(got) == n
    for line, record in zip(got, t.records[:n], strict=True):
        fields = _struct_fields(line)
        want = {k: _connect_text(v) for k, v in record.items() if not k.startswith("_") and v is not None}
        assert fields == want, (fields, want)


def test_a_record_the_sink_refuses_goes_to_the_dead_letter_topic(topics: dict[str, Topic], stack: Any) -> None:
    from producer.consumer.ecs import EcsFormatter
    from producer.consumer.runner import ConsumeOptions, Runner
    from producer.consumer.sinks.bulk import BulkSink
    from tests.fake_http import serve

    topic, ids = _subset(stack, topics["record"], 3, "refused")

    def node(req: Any) -> tuple[int, Any]:
        docs = req.ndjson()[1::2]
        items = [{"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}}
                 if d["event"]["id"] == ids[1] else {"index": {"status": 201}} for d in docs]
        return 200, {"errors": True, "items": items}

    with serve(node) as srv:
        opts = ConsumeOptions(bootstrap_servers=stack.bootstrap_servers, schema_registry=stack.registry_url,
                              topic=topic, group=f"test-{uuid.uuid4().hex[:8]}", from_beginning=True,
                              idle_timeout_s=3)
        report = Runner(opts, EcsFormatter(), BulkSink(srv.url, EcsFormatter(), "idx")).run(threading.Event())
    assert (report.counters["events_written"], report.counters["records_dead_lettered"]) == (2, 1)
    assert report.counters["dead_letter_sink_rejected"] == 1
    [dead] = read_topic(stack.bootstrap_servers, dlq_topic(topic))
    h = {k: v.decode() for k, v in dead.headers()}
    assert (h["hdrlog.errors.reason"], h["__connect.errors.stage"], h["__connect.errors.offset"],
            h["hdrlog.errors.record.index"]) == ("sink_rejected", "TASK_PUT", "1", "0")
    assert "mapper_parsing_exception" in h["__connect.errors.exception.message"]
    assert dead.value() == topics["record"].messages[1].value()


def test_kafka_json_sink_writes_one_message_per_event_keyed_by_its_id(
        topics: dict[str, Topic], stack: Any) -> None:
    topic, ids = _subset(stack, topics["record"], 500, "json-src")
    out = f"hdrlog.test.json.{uuid.uuid4().hex[:8]}"
    s = ConsumerProcess(stack, topic, "--format", "ecs", "--sink", f"kafka:{out}", "--idle-timeout", "3").wait()
    assert s["events_written"] == 500
    msgs = read_topic(stack.bootstrap_servers, out)
    assert [m.key().decode() for m in msgs] == ids
    events = [json.loads(m.value()) for m in msgs]
    assert [e["event"]["id"] for e in events] == ids and not [p for e in events for p in ecs_problems(e)]
