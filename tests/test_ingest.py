"""POST /api/v1/logging against the real agent, broker and registry, with curl as the client.

Valid, invalid, oversized, unauthorized and repeated requests: every accepted
event is in Kafka exactly once (identity: agent instance and sequence), every
refused request got its status and reason, and the agent's counters equal
both.  With the memory buffer a 202 means Kafka already has the events; a full
queue answers 429 with Retry-After.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from producer.serialize.avro import parse_frame
from producer.serialize.registry import Registry
from tests.conftest import read_topic, summary_of

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

TOKEN = "s3cret-token-for-tests"


def curl(url: str, body: bytes, *, token: str | None = TOKEN, headers: dict[str, str] | None = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST with curl; (status, JSON body, response headers)."""
    argv = ["curl", "-sS", "-X", "POST", "--data-binary", "@-", "-H", f"Content-Type: {content_type}",
            "-D", "/dev/stderr", "-o", "-", url]
    for k, v in {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}.items():
        argv += ["-H", f"{k}: {v}"]
    done = subprocess.run(argv, input=body, capture_output=True, timeout=60, check=True)
    head = done.stderr.decode().splitlines()
    status = int(head[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:]) if v}
    return status, orjson.loads(done.stdout), hdrs


def log_events(stack: Any, topic: str) -> list[tuple[Any, dict[str, Any]]]:
    """Every message of ``topic``, decoded with the schema the registry gives for its id."""
    msgs = read_topic(stack.bootstrap_servers, topic)
    out = []
    with Registry(stack.registry_url) as registry:
        schemas: dict[int, Any] = {}
        for m in msgs:
            schema_id, body = parse_frame(m.value())
            if schema_id not in schemas:
                schemas[schema_id] = fastavro.parse_schema(json.loads(registry.schema_text(schema_id)))
            out.append((m, fastavro.schemaless_reader(io.BytesIO(body), schemas[schema_id])))
    return out


def _agent(start_agent: Any, veth: Any, stack: Any, tmp_path: Path, buffer: str, **ingest: Any) -> Any:
    topic = f"hdrlog.test.logs.{uuid.uuid4().hex[:8]}"
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    cfg = tmp_path / "agent.toml"
    settings = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in {"topic": topic, **ingest}.items())
    cfg.write_text(f'[buffer]\ntype = "{buffer}"\n[telemetry]\ntoken_file = "{token}"\n[ingest]\n{settings}')
    agent = start_agent(veth.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--host-id", f"ingest-{topic[-8:]}")
    agent.wait_attached()
    agent.logs_topic = topic
    return agent


def _status(agent: Any) -> dict[str, Any]:
    import httpx2

    got = httpx2.get(agent.url + "/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    return dict(got.json())


KONG = {"request": {"method": "GET", "url": "http://api.local/orders/7", "size": 80,
                    "headers": {"user-agent": "curl/7.88.1"}},
        "response": {"status": 200, "size": 900}, "client_ip": "10.0.0.5", "started_at": 1764489600123,
        "latencies": {"request": 18}, "client_port": 51234, "server_addr": "10.0.0.2", "server_port": 8000}
APISIX = {"@timestamp": "2026-11-30T08:00:00+00:00", "client_ip": "10.0.0.5", "client_port": "51235",
          "server_addr": "10.0.0.2", "server_port": "9080", "method": "POST", "uri": "/orders", "status": "201"}


def test_every_accepted_event_is_in_kafka_once_and_every_refusal_is_counted(veth, stack, start_agent,
                                                                            tmp_path: Path) -> None:
    agent = _agent(start_agent, veth, stack, tmp_path, "disk", max_body_bytes=4096, body_timeout_s=1)
    url = agent.url + "/api/v1/logging"
    sent: list[str] = []

    def accepted(body: Any, n: int, path: str = "", **kw: Any) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        status, answer, _ = curl(url + path, raw, **kw)
        assert (status, answer) == (202, {"accepted": n, "duplicate": False}), answer

    one = {"message": "single", "level": "INFO",
           "details": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 40000, "port": 80,
                       "protocol": "tcp", "user": "al"}}
    accepted(one, 1)
    accepted([{"message": f"array {i}"} for i in range(3)], 3)
    accepted(b'{"message": "nd 0"}\n{"message": "nd 1"}\n', 2, content_type="application/x-ndjson")
    accepted(KONG, 1, "/kong")
    accepted([APISIX, APISIX], 2, "/apisix")
    sent += ["single", "array 0", "array 1", "array 2", "nd 0", "nd 1", "GET http://api.local/orders/7 200",
             "POST /orders 201", "POST /orders 201"]

    # a repeated Idempotency-Key: accepted once, answered as a duplicate after
    keyed = orjson.dumps([{"message": "keyed 0"}, {"message": "keyed 1"}])
    accepted(keyed, 2, headers={"Idempotency-Key": "retry-1"})
    for _ in range(2):
        status, answer, _ = curl(url, keyed, headers={"Idempotency-Key": "retry-1"})
        assert (status, answer) == (202, {"accepted": 2, "duplicate": True})
    sent += ["keyed 0", "keyed 1"]

    # refusals, each with its status and reason
    status, answer, _ = curl(url, orjson.dumps([{"message": "ok"}, {"msg": "x"}, {"message": "ok"}, 7]))
    assert status == 400 and [e["index"] for e in answer["invalid"]] == [1, 3], answer
    assert answer["error"] == "2 of 4 events are invalid; none was accepted"
    status, answer, _ = curl(url, b"{not json")
    assert status == 400 and answer["error"].startswith("the body is not JSON: "), answer
    status, answer, _ = curl(url, orjson.dumps([{"message": "x" * 100}] * 50))
    assert (status, answer) == (413, {"error": "the body is over 4096 bytes"})
    # a chunked body cut off half-way looks whole to the server: a Content-Length is required
    status, answer, _ = curl(url, orjson.dumps(one), headers={"Transfer-Encoding": "chunked"})
    assert (status, answer) == (411, {"error": "a Content-Length is required (chunked bodies are not taken)"})
    # a body that stalls half-way: 408 after ingest.body_timeout_s, nothing of it taken
    host, port = agent.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(f"POST /api/v1/logging HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"message\":".encode())
        head = slow.recv(65536).decode()
    assert head.startswith("HTTP/1.1 408 ") and "did not arrive whole within 1 s" in head, head
    import httpx2

    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx2.get(url, headers=auth).status_code == 405  # not counted: no ingest request
    assert httpx2.post(agent.url + "/api/v1/logs", headers=auth, content=b"{}").status_code == 404
    status, answer, hdrs = curl(url, orjson.dumps(one), token=None)
    assert status == 401 and hdrs["www-authenticate"] == "Bearer"
    status, answer, _ = curl(url, orjson.dumps(one), token="wrong")
    assert status == 401

    live = _status(agent)["ingest"]["counters"]
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    c = summary_of(err)["ingest"]
    assert c == {**c, "requests": 15, "accepted_requests": 6, "accepted": 11, "duplicate_requests": 2,
                 "refused_requests_invalid": 2, "refused_events_invalid": 4, "refused_requests_too_large": 1,
                 "refused_requests_incomplete": 2,
                 "refused_requests_unauthorized": 2, "buffered": 11, "delivered": 11, "messages_delivered": 11,
                 "left_in_buffer": 0}
    assert sum(v for k, v in c.items() if k.startswith(("refused_", "dropped_"))) == 2 + 4 + 1 + 2 + 2
    assert live["accepted"] == 11 and live["requests"] == 15

    events = log_events(stack, agent.logs_topic)
    assert sorted(e["message"] for _m, e in events) == sorted(sent)
    assert len({(e["agent_instance"], e["sequence"]) for _m, e in events}) == 11
    assert sorted(e["sequence"] for _m, e in events) == list(range(11))
    assert {m.key() for m, _e in events} == {agent_host(events)} and len({m.partition() for m, _e in events}) == 1
    single = next(e for _m, e in events if e["message"] == "single")
    assert single["level"] == "info" and single["attributes"] == {"user": "al"} and single["source"] == "GENERIC"
    assert (single["src_port"], single["dst_port"], single["src_ip"]) == (40000, 80, bytes([10, 0, 0, 1]))
    kong = next(e for _m, e in events if e["source"] == "KONG")
    assert (kong["http_status"], kong["duration_ns"], kong["src_port"]) == (200, 18_000_000, 51234)

    # the consumer maps them: ECS and OCSF HTTP Activity, one event each, with the Community ID
    mapped = {}
    for fmt, check in (("ecs", lambda e: e["event"]["dataset"] == "hdrlog.logs"),
                       ("ocsf", lambda e: e["class_uid"] == 4002)):
        docs = mapped[fmt] = consumed(stack, agent.logs_topic, fmt, tmp_path / fmt)
        assert len(docs) == 11 and all(check(d) for d in docs), docs[:2]
        assert sorted(d["message"] for d in docs) == sorted(sent)
    ecs = mapped["ecs"]
    single_doc = next(d for d in ecs if d["message"] == "single")
    import communityid  # the reference implementation

    flow = communityid.FlowTuple.make_tcp("10.0.0.1", "10.0.0.2", 40000, 80)
    assert single_doc["network"]["community_id"] == communityid.CommunityID().calc(flow)


def consumed(stack: Any, topic: str, fmt: str, out: Path) -> list[dict[str, Any]]:
    """``hdrlog consume`` of the whole topic into NDJSON files under ``out``; the events it wrote."""
    from tests.conftest import run_hdrlog

    done = run_hdrlog("consume", "--topic", topic, "--bootstrap-servers", stack.bootstrap_servers,
                      "--schema-registry", stack.registry_url, "--from-beginning", "--idle-timeout", "3",
                      "--group", f"test-{uuid.uuid4().hex[:8]}", "--format", fmt, "--sink", f"file:{out}")
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for f in sorted(out.rglob("*.ndjson")) for line in f.read_bytes().splitlines()]


def agent_host(events: list[tuple[Any, dict[str, Any]]]) -> bytes:
    return str(events[0][1]["host_id"]).encode()


def test_memory_buffer_answers_once_kafka_has_the_events(veth, stack, start_agent, tmp_path: Path) -> None:
    agent = _agent(start_agent, veth, stack, tmp_path, "memory")
    url = agent.url + "/api/v1/logging"
    for i in range(3):
        status, answer, _ = curl(url, orjson.dumps({"message": f"acked {i}"}))
        assert (status, answer) == (202, {"accepted": 1, "duplicate": False})
        # the 202 came after Kafka's acknowledgement: the event is readable now
        assert f"acked {i}" in {e["message"] for _m, e in log_events(stack, agent.logs_topic)}
    _out, err = agent.stop()
    c = summary_of(err)["ingest"]
    assert (c["accepted"], c["delivered"], c["buffered"]) == (3, 3, 3)


def test_a_full_queue_answers_429_with_retry_after(veth, stack, start_agent, tmp_path: Path) -> None:
    # the first request lingers 2 s for company and holds the whole queue meanwhile
    agent = _agent(start_agent, veth, stack, tmp_path, "disk", max_queue_events=2, linger_ms=2000.0)
    url = agent.url + "/api/v1/logging"
    first: list[Any] = []
    waiting = threading.Thread(target=lambda: first.append(curl(url, orjson.dumps([{"message": "a"},
                                                                                  {"message": "b"}]))))
    waiting.start()
    from tests.conftest import wait_for

    wait_for(lambda: _status(agent)["ingest"]["queue"]["held_events"] == 2, 10, "the first request to queue")
    status, answer, hdrs = curl(url, orjson.dumps({"message": "c"}))
    assert (status, hdrs["retry-after"]) == (429, "1") and "retry later" in answer["error"]
    waiting.join(30)
    assert first[0][:2] == (202, {"accepted": 2, "duplicate": False})
    _out, err = agent.stop()
    c = summary_of(err)["ingest"]
    assert (c["accepted"], c["refused_requests_overloaded"], c["refused_events_overloaded"], c["delivered"]) == \
        (2, 1, 1, 2)


def test_tls_and_the_token_reach_hdrlog_status(veth, stack, start_agent, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    agent = _agent(start_agent, veth, stack, tmp_path, "disk")
    cfg = tmp_path / "agent.toml"
    agent.stop()
    cfg.write_text(cfg.read_text().replace("[telemetry]\n", f'[telemetry]\ntls_cert_file = "{cert}"\n'
                                           f'tls_key_file = "{key}"\n'))
    agent = start_agent(veth.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url)
    agent.wait_attached()
    assert agent.url.startswith("https://127.0.0.1:")
    argv = ["curl", "-sS", "--cacert", str(cert), "-H", f"Authorization: Bearer {TOKEN}", "-o", "/dev/null",
            "-w", "%{http_code}", "-X", "POST", "--data-binary", '{"message": "over tls"}',
            agent.url + "/api/v1/logging"]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout == "202"
    plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            agent.url.replace("https", "http") + "/api/v1/status"],
                           capture_output=True, text=True, timeout=60)
    assert plain.stdout != "200"  # no plaintext answer on the TLS port
    from tests.conftest import run_hdrlog

    shown = run_hdrlog("status", "--config", str(cfg), "--url", agent.url)
    assert shown.returncode == 0, shown.stderr
    assert "ingest   requests 1  events accepted 1" in shown.stdout
    no_token = run_hdrlog("status", "--url", agent.url, env={**__import__("os").environ,
                                                             "SSL_CERT_FILE": str(cert)})
    assert no_token.returncode == 1 and "401" in no_token.stderr
    agent.stop()


def _proc_status(pid: int) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in
                                          Path(f"/proc/{pid}/status").read_text().splitlines())}


def test_a_parse_worker_runs_without_privileges_and_its_death_costs_only_its_requests(
        veth, stack, start_agent, tmp_path: Path) -> None:
    """The worker that parses hostile bodies has no capability and is nobody; killed with a request in
    flight, that request gets 503 with Retry-After, the worker is started again, counted, and every
    event answered 202 is in Kafka once."""
    import os
    import signal

    from producer.bench.ingest import worker_pids
    from tests.conftest import wait_for

    agent = _agent(start_agent, veth, stack, tmp_path, "disk")
    url = agent.url + "/api/v1/logging"
    first = wait_for(lambda: worker_pids(agent.proc.pid), 30, "the parse worker")
    assert len(first) == 1
    for pid in first:
        st = _proc_status(pid)
        assert (st["CapEff"], st["CapPrm"], st["CapInh"], st["CapAmb"]) == ("0" * 16,) * 4, st
        assert st["NoNewPrivs"] == "1" and st["Uid"].split() == ["65534"] * 4, st

    assert curl(url, orjson.dumps({"message": "before"}))[0] == 202
    os.kill(first[0], signal.SIGSTOP)  # the next request waits in the worker...
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    waiting = threading.Thread(target=lambda: answers.append(curl(url, orjson.dumps({"message": "lost"}))))
    waiting.start()
    wait_for(lambda: _status(agent)["ingest"]["counters"]["requests"] == 2, 30, "the request in flight")
    os.kill(first[0], signal.SIGKILL)  # ...and the worker dies with it
    waiting.join(60)
    status, answer, hdrs = answers[0]
    assert (status, hdrs["retry-after"]) == (503, "5"), answer
    assert answer["error"] == "the parse worker died with the request; retry"

    # a client that retries gets through once the worker is started again (503 until then)
    retried = 0

    def after() -> bool:
        nonlocal retried
        status, answer, hdrs = curl(url, orjson.dumps([{"message": "after 0"}, {"message": "after 1"}]))
        if status == 503:
            assert hdrs["retry-after"] == "5" and "not yet started again" in answer["error"], answer
            retried += 1
            return False
        assert (status, answer) == (202, {"accepted": 2, "duplicate": False}), answer
        return True

    wait_for(after, 30, "a new parse worker")
    second = worker_pids(agent.proc.pid)
    assert len(second) == 1 and second != first
    # started again by the agent after it became its user (hdrlog, by default): as that user, from the code
    # wherever it is (through the agent's descriptors where that user could not reach it)
    st = _proc_status(second[0])
    assert st["CapEff"] == "0" * 16, st
    assert st["Uid"].split() == _proc_status(agent.proc.pid)["Uid"].split() != ["0"] * 4, st

    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    assert f"the parse worker (pid {first[0]}) died (signal 9) with 1 requests in flight" in err
    c = summary_of(err)["ingest"]
    assert c == {**c, "requests": 3 + retried, "accepted_requests": 2, "accepted": 3, "parse_worker_restarts": 1,
                 "refused_requests_unavailable": 1 + retried, "refused_events_unavailable": 0,
                 "delivered": 3, "left_in_buffer": 0}
    events = log_events(stack, agent.logs_topic)
    assert sorted(e["message"] for _m, e in events) == ["after 0", "after 1", "before"]
