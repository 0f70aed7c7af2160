"""The parse workers (producer/ingest/workers.py): a real worker process against the agent's own parser.

Every body (valid, partly invalid, not JSON, NDJSON, each gateway shape, the
random items of test_ingest_parse) gets from a worker exactly what
``take_body`` gives in the agent's process: the same encoded parts, the same
indexed reasons, the same body error.  Too many bytes waiting is WorkersBusy;
a worker that dies fails its requests with WorkerGone and is started again.
The worker's privileges and a death inside the real agent: tests/test_ingest.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvloop

from producer.ingest import workers
from producer.ingest.parse import BodyError, Shape, Values
from producer.ingest.workers import ParseWorkers, Setup, WorkerGone, WorkersBusy, take_body
from producer.serialize.schemas import AvroSchema
from tests.test_ingest import APISIX, KONG
from tests.test_ingest_parse import NOW, _random_item

SCHEMA = AvroSchema.load("LogEvent")
SETUP = Setup(SCHEMA.raw, 42, {"host_id": "node ✓", "agent_instance": "8c0b6f5e"})


@pytest.fixture
def pool() -> Iterator[tuple[ParseWorkers, asyncio.AbstractEventLoop, list[int]]]:
    deaths: list[int] = []
    p = ParseWorkers(1, SETUP, lambda: deaths.append(1), max_bytes=1 << 20)
    p.start()
    loop = uvloop.new_event_loop()
    try:
        yield p, loop, deaths
    finally:
        loop.run_until_complete(p.detach())
        p.close()
        loop.close()


def _inline(body: bytes, content_type: str, shape: Shape, values: Values) -> Any:
    try:
        return take_body(body, content_type, shape, NOW, values, SETUP.encoder())
    except BodyError as exc:
        return ("body", str(exc))


def _by_worker(pool: ParseWorkers, loop: asyncio.AbstractEventLoop, cases: list[tuple[bytes, str, Shape]]) -> list[Any]:
    async def one(body: bytes, content_type: str, shape: Shape) -> Any:
        try:
            return await pool.take(body, content_type, shape, NOW)
        except BodyError as exc:
            return ("body", str(exc))

    async def every() -> list[Any]:  # all at once: answers must come back to their own requests
        return list(await asyncio.gather(*(one(*c) for c in cases)))

    return loop.run_until_complete(every())


def test_a_worker_answers_what_the_agents_process_would(pool: Any) -> None:
    p, loop, deaths = pool
    rnd = random.Random(3)
    cases: list[tuple[bytes, str, Shape]] = [
        (orjson.dumps({"message": "one", "details": {"src_ip": "10.0.0.1", "port": 80}}), "application/json",
         Shape.GENERIC),
        (orjson.dumps([{"message": "ok"}, {"msg": "x"}, 7]), "application/json", Shape.GENERIC),
        (b"{not json", "application/json", Shape.GENERIC),
        (b"", "application/json", Shape.GENERIC),
        (b"[]", "application/json", Shape.GENERIC),
        (b'{"message": "nd 0"}\n{bad\n{"message": "nd 2"}\n', "application/x-ndjson", Shape.GENERIC),
        (b'{"message": "nd 0"}\n{"message": "nd 1"}\n', "application/x-ndjson", Shape.GENERIC),
        (orjson.dumps(KONG), "application/json", Shape.KONG),
        (orjson.dumps([APISIX, {"uri": 5}]), "application/json", Shape.APISIX),
    ]
    for _ in range(250):
        items = [_random_item(rnd) for _ in range(rnd.randint(1, 20))]
        for body in (orjson.dumps(items), *(orjson.dumps(item) for item in items)):  # whole, then one by one
            cases.append((body, "application/json", Shape.GENERIC))
    got = _by_worker(p, loop, cases)
    values = Values()
    want = [_inline(*c, values) for c in cases]
    assert got == want
    kinds = {type(w).__name__ for w in want}
    assert kinds == {"Parts", "Parsed", "tuple"}  # encoded events, indexed reasons, and body errors all came
    assert sum(w.count for w in want if type(w).__name__ == "Parts") > 500
    assert deaths == []


def test_too_many_waiting_bytes_are_refused_before_they_reach_a_worker() -> None:
    p = ParseWorkers(1, SETUP, lambda: None, max_bytes=100)
    p.start()
    loop = uvloop.new_event_loop()
    body = orjson.dumps([{"message": "x" * 30}])

    async def two() -> list[Any]:
        return list(await asyncio.gather(p.take(body, "", Shape.GENERIC, NOW), p.take(body * 2, "", Shape.GENERIC, NOW),
                                         return_exceptions=True))

    try:
        first, second = loop.run_until_complete(two())
        assert first.count == 1 and isinstance(second, WorkersBusy)
        assert loop.run_until_complete(p.take(body, "", Shape.GENERIC, NOW)).count == 1  # nothing waits now
    finally:
        loop.run_until_complete(p.detach())
        p.close()
        loop.close()


def test_a_dead_worker_fails_its_requests_and_is_started_again(pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    p, loop, deaths = pool
    body = orjson.dumps({"message": "m"})
    assert loop.run_until_complete(p.take(body, "", Shape.GENERIC, NOW)).count == 1
    [pid] = p.pids
    os.kill(pid, signal.SIGSTOP)

    async def in_flight_then_kill() -> Any:
        task = asyncio.ensure_future(p.take(body, "", Shape.GENERIC, NOW))
        await asyncio.sleep(0)  # the request is written to the stopped worker
        os.kill(pid, signal.SIGKILL)
        return (await asyncio.gather(task, return_exceptions=True))[0]

    gone = loop.run_until_complete(in_flight_then_kill())
    assert isinstance(gone, WorkerGone) and str(gone) == "the parse worker died with the request"
    assert deaths == [1] and p.pids == []
    with pytest.raises(WorkerGone, match="not yet started again"):
        loop.run_until_complete(p.take(body, "", Shape.GENERIC, NOW))
    monkeypatch.setattr(workers, "RESPAWN_S", 0.0)
    assert loop.run_until_complete(p.take(body, "", Shape.GENERIC, NOW)).count == 1
    assert len(p.pids) == 1 and p.pids != [pid] and deaths == [1]


def test_a_stuck_worker_is_killed_and_its_requests_fail(pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that holds a request past PARSE_TIMEOUT_S (here: any request, the deadline being 0) is
    killed at the server's next check; the request fails with WorkerGone and the death is counted."""
    p, loop, deaths = pool
    assert loop.run_until_complete(p.take(orjson.dumps({"message": "m"}), "", Shape.GENERIC, NOW)).count == 1
    [pid] = p.pids
    os.kill(pid, signal.SIGSTOP)
    monkeypatch.setattr(workers, "PARSE_TIMEOUT_S", 0.0)

    async def held_then_checked() -> Any:
        task = asyncio.ensure_future(p.take(orjson.dumps({"message": "m"}), "", Shape.GENERIC, NOW))
        await asyncio.sleep(0)  # written to the stopped worker
        p.check()
        return (await asyncio.gather(task, return_exceptions=True))[0]

    gone = loop.run_until_complete(held_then_checked())
    assert isinstance(gone, WorkerGone) and deaths == [1] and p.pids == []
