"""The HTTP sinks against local servers that answer with the documented response formats.

``_bulk`` (OpenSearch / Elasticsearch bulk API): a 200 with ``errors: true``
and per-item statuses (429 ``es_rejected_execution_exception``: send it again;
400 ``mapper_parsing_exception``: refused for good), whole requests answered
429 / 503 (again) or 401 (stop), 413 (smaller requests).  HEC (Splunk's
``/services/collector/event``): ``{"text": "Success", "code": 0}``; 400
``{"text": "Invalid data format", "code": 6, "invalid-event-number": N}``
(events before N indexed, N refused, the rest sent again); 503
``{"text": "Server is busy", "code": 9}``; 403 ``{"text": "Token disabled",
"code": 1}``.  The real OpenSearch is in tests/test_consumer.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from producer.consumer.cim import CimFormatter
from producer.consumer.ecs import EcsFormatter
from producer.consumer.mapping import Origin
from producer.consumer.sinks.bulk import BulkSink
from producer.consumer.sinks.hec import HecSink
from producer.consumer.sinks.http import HttpOptions
from producer.errors import ConfigError, SinkError
from tests.fake_http import Request, serve
from tests.test_consumer_mapping import consumer_records

ECS = EcsFormatter()


def _events(n: int) -> list[dict[str, Any]]:
    return ECS.events(consumer_records("batch", n)[:n], Origin("t", 0, 0))


def _item(status: int, error: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"_index": "x", "_id": "y", "status": status}
    if error:
        result["error"] = {"type": error, "reason": f"the {error} reason"}
    return {"index": result}


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, s: float) -> None:
        self.calls.append(s)


def test_bulk_retries_429_items_and_refuses_400_items() -> None:
    events = _events(10)
    answers = iter([
        (200, {"took": 3, "errors": True, "items": [
            _item(429, "es_rejected_execution_exception") if i == 2 else
            _item(400, "mapper_parsing_exception") if i == 5 else _item(201) for i in range(10)]}),
        (200, {"took": 1, "errors": False, "items": [_item(201)]}),
    ])
    with serve(lambda _r: next(answers)) as srv:
        sleeps = Sleeps()
        sink = BulkSink(srv.url, ECS, "hdrlog-ecs-{date}", sleep=sleeps)
        refused = sink.write(events)
        sink.close()
    assert refused == [(5, "HTTP 400 mapper_parsing_exception: the mapper_parsing_exception reason")]
    first, second = srv.requests
    assert first.path == "/_bulk" and first.headers["content-type"] == "application/x-ndjson"
    lines = first.ndjson()
    assert len(lines) == 20
    assert [a["index"]["_id"] for a in lines[0::2]] == [e["event"]["id"] for e in events]
    assert all(a["index"]["_index"] == "hdrlog-ecs-" + d["@timestamp"][:10].replace("-", ".")
               for a, d in zip(lines[0::2], lines[1::2], strict=True))
    assert lines[1::2] == events
    assert second.ndjson()[1] == events[2]  # only the 429 item again
    assert len(sleeps.calls) == 1


def test_bulk_sends_a_whole_request_again_after_429_and_503() -> None:
    events = _events(4)
    answers = iter([(429, {"error": "too many requests"}), (503, {"error": "unavailable"}),
                    (200, {"errors": False, "items": [_item(200)] * 4})])
    with serve(lambda _r: next(answers)) as srv:
        sleeps = Sleeps()
        sink = BulkSink(srv.url, ECS, "idx", sleep=sleeps)
        assert sink.write(events) == []
    assert len(srv.requests) == 3 and srv.requests[0].body == srv.requests[2].body
    assert len(sleeps.calls) == 2


def test_bulk_stops_on_401_without_showing_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-pw\n")
    with serve(lambda _r: (401, {"error": "unauthorized"})) as srv:
        sink = BulkSink(srv.url, ECS, "idx", HttpOptions(user="hdrlog", password_file=str(secret)))
        with pytest.raises(SinkError) as err:
            sink.write(_events(2))
    assert not err.value.retriable and "HTTP 401" in str(err.value) and "s3cret" not in str(err.value)
    assert srv.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"hdrlog:s3cret-pw").decode()


def test_bulk_gives_up_after_the_retry_deadline() -> None:
    with serve(lambda _r: (429, {"error": "busy"})) as srv:
        sink = BulkSink(srv.url, ECS, "idx", HttpOptions(retry_s=0.05), sleep=Sleeps())
        with pytest.raises(SinkError) as err:
            sink.write(_events(3))
    assert not err.value.retriable and "3 items still not taken" in str(err.value)


def test_bulk_halves_requests_the_node_finds_too_large() -> None:
    events = _events(8)

    def node(r: Request) -> tuple[int, Any]:
        docs = len(r.ndjson()) // 2
        return (413, {"error": "too large"}) if docs > 2 else (200, {"errors": False, "items": [_item(201)] * docs})

    with serve(node) as srv:
        sink = BulkSink(srv.url, ECS, "idx", sleep=Sleeps())
        assert sink.write(events) == []
    sent = [d for r in srv.requests if len(r.ndjson()) <= 4 for d in r.ndjson()[1::2]]
    assert sent == events


# -- HEC ---------------------------------------------------------------------------------------------

CIM = CimFormatter()


def _cim(n: int) -> list[dict[str, Any]]:
    return CIM.events(consumer_records("batch", n)[:n], Origin("t", 0, 0))


@pytest.fixture
def token(tmp_path: Path) -> str:
    path = tmp_path / "hec-token"
    path.write_text("11111111-2222-3333-4444-555555555555\n")
    return str(path)


def test_hec_sends_cim_events_in_envelopes_with_the_token(token: str) -> None:
    events = _cim(5)
    with serve(lambda _r: (200, {"text": "Success", "code": 0})) as srv:
        sink = HecSink(srv.url, HttpOptions(token_file=token), index="netsec")
        assert sink.write(events) == []
    [req] = srv.requests
    assert req.path == "/services/collector/event"
    assert req.headers["authorization"] == "Splunk 11111111-2222-3333-4444-555555555555"
    envelopes = req.concatenated_json()
    assert len(envelopes) == 5
    for env, e in zip(envelopes, events, strict=True):
        assert env["time"] == e["_time"] and env["host"] == e["dvc"] == "host-1"
        assert (env["source"], env["sourcetype"], env["index"]) == ("hdrlog", "hdrlog:headers", "netsec")
        assert env["event"] == {k: v for k, v in e.items() if k != "_time"}
        assert {"src_mac", "dest_mac", "direction", "bytes", "packets", "event_id"} <= set(env["event"])


def test_hec_refuses_the_invalid_event_and_sends_the_rest_again(token: str) -> None:
    events = _cim(6)
    answers = iter([(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 2}),
                    (200, {"text": "Success", "code": 0})])
    with serve(lambda _r: next(answers)) as srv:
        sink = HecSink(srv.url, HttpOptions(token_file=token), sleep=Sleeps())
        refused = sink.write(events)
    assert refused == [(2, "HTTP 400 code 6: Invalid data format")]
    first, second = srv.requests
    assert [e["event"]["event_id"] for e in second.concatenated_json()] == [e["event_id"] for e in events[3:]]
    assert len(first.concatenated_json()) == 6


def test_hec_waits_while_the_server_is_busy(token: str) -> None:
    answers = iter([(503, {"text": "Server is busy", "code": 9}), (200, {"text": "Success", "code": 0})])
    with serve(lambda _r: next(answers)) as srv:
        sleeps = Sleeps()
        assert HecSink(srv.url, HttpOptions(token_file=token), sleep=sleeps).write(_cim(3)) == []
    assert len(srv.requests) == 2 and len(sleeps.calls) == 1


def test_hec_stops_on_a_disabled_token_without_showing_it(token: str) -> None:
    with serve(lambda _r: (403, {"text": "Token disabled", "code": 1})) as srv, pytest.raises(SinkError) as err:
        HecSink(srv.url, HttpOptions(token_file=token)).write(_cim(2))
    assert not err.value.retriable and "HTTP 403" in str(err.value) and "1111" not in str(err.value)


def test_hec_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HDRLOG_SINK_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        HecSink("http://127.0.0.1:9", HttpOptions())
    monkeypatch.setenv("HDRLOG_SINK_TOKEN", "from-env")
    HecSink("http://127.0.0.1:9", HttpOptions()).close()


def test_bulk_stops_when_an_item_error_holds_for_every_document() -> None:
    for status, error in ((403, "security_exception"), (404, "index_not_found_exception"),
                          (400, "index_closed_exception")):
        answer = (200, {"errors": True, "items": [_item(201), _item(status, error)]})
        with serve(lambda _r, a=answer: a) as srv, pytest.raises(SinkError) as err:  # type: ignore[misc]
            BulkSink(srv.url, ECS, "idx", sleep=Sleeps()).write(_events(2))
        assert not err.value.retriable and error in str(err.value) and "every document" in str(err.value)


def test_bulk_stops_on_an_answer_that_is_not_the_bulk_apis() -> None:
    for answer in ({"not": "bulk"}, {"items": [{"index": {"_id": "x"}}]}):
        with serve(lambda _r, a=answer: (200, a)) as srv, pytest.raises(SinkError) as err:  # type: ignore[misc]
            BulkSink(srv.url, ECS, "idx").write(_events(1))
        assert not err.value.retriable and "not the bulk API's answer" in str(err.value)


def test_sink_urls_with_credentials_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        BulkSink("https://elastic:s3cret@127.0.0.1:9200", ECS, "idx")
    assert "s3cret" not in str(err.value) and "--sink-user" in str(err.value)


def test_hec_stops_on_a_400_that_names_no_event(token: str) -> None:
    with serve(lambda _r: (400, {"text": "Incorrect index", "code": 7, "invalid-event-number": None})) as srv, \
            pytest.raises(SinkError) as err:
        HecSink(srv.url, HttpOptions(token_file=token), index="nope").write(_cim(3))
    assert not err.value.retriable and "refuses every event" in str(err.value) and "Incorrect index" in str(err.value)


def test_kafka_json_sink_sorts_delivery_failures_by_their_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import KafkaError

    from producer.consumer.sinks import kafka_json

    class FakeProducer:
        codes: dict[int, int] = {}

        def __init__(self, _conf: dict[str, Any]) -> None:
            self.reports: list[tuple[Any, int | None]] = []

        def produce(self, _topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
            self.reports.append((on_delivery, self.codes.get(len(self.reports))))

        def poll(self, _t: float) -> int:
            return 0

        def flush(self, _t: float) -> int:
            for cb, code in self.reports:
                cb(KafkaError(code) if code is not None else None, None)
            self.reports.clear()
            return 0

    monkeypatch.setattr(kafka_json, "Producer", FakeProducer)
    events = _events(3)
    sink = kafka_json.KafkaJsonSink({}, "out", ECS.event_id)
    FakeProducer.codes = {1: KafkaError.MSG_SIZE_TOO_LARGE}
    assert [i for i, _ in sink.write(events)] == [1]  # one message too large: dead-lettered
    FakeProducer.codes = {0: KafkaError._MSG_TIMED_OUT}
    with pytest.raises(SinkError) as err:
        sink.write(events)
    assert err.value.retriable  # a timeout: the write is repeated
    FakeProducer.codes = {2: KafkaError.TOPIC_AUTHORIZATION_FAILED}
    with pytest.raises(SinkError) as err:
        sink.write(events)
    assert not err.value.retriable  # nothing would get through: stop
