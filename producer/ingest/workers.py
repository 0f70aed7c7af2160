"""Request bodies to encoded events, away from the agent's event loop: the parse workers.

    server (event loop) --body--> worker process: parse.py + RowEncoder.parts --parts--> server --> stage

Parsing JSON and building rows holds the interpreter lock: in the agent's own
process it took half the lock's time at 100,000 events a second and bounded
the ingest (BENCHMARKS.md).  ``ParseWorkers`` runs ``ingest.parse_workers``
processes (``python -P -m producer.ingest.workers``) that each take a body and
answer with the events encoded but for their sequence (``Parts``; the stage
splices the sequence in when it commits), or with why not.  The agent's side
costs a pipe write and read a request.

A worker parses what an attacker may send, so it keeps nothing it does not
need: once started it drops every capability and, started as root, becomes
``nobody``; it sets no-new-privileges and dies with the agent
(PR_SET_PDEATHSIG).  A worker that dies, or holds a request for
``PARSE_TIMEOUT_S`` (it is then killed), fails its requests in flight with
``WorkerGone`` (the server answers 503 with Retry-After, so a body that kills
the parser costs one worker, not the agent), is counted
(``parse_worker_restarts``) and logged, and is started again at the next
request, at most once a ``RESPAWN_S``.

``ingest.parse_workers = 0`` parses in the agent's process (``InlineParser``).
Both give the same answers: ``take_body`` is the one function that does the
work either way.

The pipe's frames, native byte order: a request is ``REQUEST`` (id,
received_ns, flags, body length) and the body; an answer is ``ANSWER`` (id,
kind, events, length) and ``length`` bytes: for PARTS the cuts then the
blob, for ERRORS a JSON ``{"items": n, "errors": [[index, reason], ...]}``,
for BODY and FAILED the reason in UTF-8.  The first frame each way is the
setup (length-prefixed JSON) and READY.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from producer.errors import HdrlogError, SerializationError
from producer.ingest.parse import BodyError, Parsed, Shape, Values, parse
from producer.privileges import capset, no_new_privs
from producer.serialize.rows import Parts, RowEncoder
from producer.serialize.schemas import AvroSchema

log = logging.getLogger(__name__)

REQUEST = struct.Struct("=QqBQ")  # id, received_ns, flags, body length
ANSWER = struct.Struct("=QBQQ")  # id, kind, events, length
SETUP = struct.Struct("=I")  # length of the setup JSON
NDJSON = 0x80  # flags: the body is NDJSON; the low bits are the Shape
PARTS, ERRORS, BODY, FAILED, READY = range(5)
#: a dead worker is started again at most once in this many seconds (503 until then)
RESPAWN_S = 1.0
#: a worker that has not answered a request for this long is killed (and started again)
PARSE_TIMEOUT_S = 10.0
#: how long a worker may take to start (imports, warm-up)
START_TIMEOUT_S = 60.0
NOBODY = 65534
#: the only environment variables a worker gets (the agent's may hold secrets)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONHASHSEED", "TZ")
#: a body the worker parses once before it drops its privileges, so every lazy import is done
WARM_UP = (b'[{"message":"warm-up","timestamp":"2026-11-30T08:00:00.1Z","level":"INFO","details":'
           b'{"src_ip":"10.0.0.1","dst_ip":"::1","src_port":1,"port":2,"protocol":"tcp","k":1.5}}]')


class WorkerGone(HdrlogError):
    """The worker that had the request died (or none runs yet): the request may be retried."""


class WorkersBusy(HdrlogError):
    """Too many body bytes wait for the workers (``ingest.max_queue_bytes``): retry later."""


Taken = Parts | Parsed  # encoded events, or a Parsed that lists the bad ones
MODULE = "producer.ingest.workers"
#: how to start ``python -m MODULE``: (argv, environment to add, descriptors to pass)
Command = Callable[[str], tuple[list[str], dict[str, str], tuple[int, ...]]]


def python_module(module: str) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    """This interpreter, ``-P -m module``."""
    return [sys.executable, "-P", "-m", module], {}, ()


def take_body(body: bytes, content_type: str, shape: Shape, received_ns: int, values: Values,
              encoder: RowEncoder) -> Taken:
    """The body's events encoded but for their sequence, or the Parsed that lists the bad items.
    Raises BodyError (a 400) and SerializationError (an event the schema refuses: a bug, a 500)."""
    parsed = parse(body, content_type, shape, received_ns, values)
    if parsed.errors:
        return parsed
    return encoder.parts(parsed.rows)


@dataclass(frozen=True, slots=True)
class Setup:
    """What a worker needs to encode: LogEvent's schema, its registry id, the agent's constant fields."""

    schema: dict[str, Any]
    schema_id: int
    consts: dict[str, Any]

    def encoder(self) -> RowEncoder:
        return RowEncoder(AvroSchema.from_raw("LogEvent", self.schema), self.schema_id, self.consts)


class InlineParser:
    """``ingest.parse_workers = 0``: the agent's own process parses (its event loop holds the lock)."""

    def __init__(self, encoder: RowEncoder) -> None:
        self._encoder = encoder
        self._values = Values()

    async def take(self, body: bytes, content_type: str, shape: Shape, received_ns: int) -> Taken:
        return take_body(body, content_type, shape, received_ns, self._values, self._encoder)

    def check(self) -> None:
        pass

    async def detach(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- the agent's side -------------------------------------------------------------------


class _Worker:
    """One worker process and its requests in flight; used on the server's event loop only (but
    ``kill``)."""

    def __init__(self, setup: bytes, on_death: Callable[[], None], command: Command) -> None:
        self._setup = setup
        self._on_death = on_death
        self._command = command
        self._proc: subprocess.Popen[bytes] | None = None
        self._link: asyncio.Future[None] | None = None  # the event loop taking the pipes
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._waiting: dict[int, tuple[asyncio.Future[Taken], float]] = {}  # id -> (answer, sent at), in order
        self._buf = bytearray()
        self._next_id = 0
        self._died_at = -RESPAWN_S
        self._unkillable: int | None = None  # a worker the agent may not signal (see check)
        self._detaching = False

    def spawn(self) -> None:
        """Start the process and send its setup (it answers READY once it can take bodies)."""
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}  # no secret of the agent's
        # -P: the working directory is not on the worker's import path (it may be anyone's)
        argv, extra, fds = self._command(MODULE)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                env=env | extra, pass_fds=fds)
        assert proc.stdin is not None
        try:
            proc.stdin.write(SETUP.pack(len(self._setup)) + self._setup)
            proc.stdin.flush()
        except OSError:
            proc.kill()
            proc.wait()
            raise
        self._proc = proc
        self._buf.clear()

    def wait_ready(self, timeout: float) -> None:
        """Block until READY (at the agent's start, before the event loop takes the pipes)."""
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        head = b""
        while len(head) < ANSWER.size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                self.kill()
                raise HdrlogError(f"the parse worker did not start within {timeout:g} s")
            chunk = self._proc.stdout.read1(ANSWER.size - len(head))  # type: ignore[attr-defined]
            if not chunk:
                code = self._proc.wait()
                self._proc = None
                raise HdrlogError(f"the parse worker exited at start (status {code}; its error is above)")
            head += chunk
        if ANSWER.unpack(head)[1] != READY:
            self.kill()
            raise HdrlogError("the parse worker answered its setup with something other than READY")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def resting(self) -> bool:
        """Dead, and too recently to be started again."""
        return self._proc is None and time.monotonic() - self._died_at < RESPAWN_S

    async def _connect(self) -> None:
        """Hand the pipes to the event loop: duplicates it owns (uvloop closes a pipe's descriptor and
        then the file object given to it, the same number twice: MagicStack/uvloop#763)."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        loop = asyncio.get_running_loop()
        w, r = os.dup(proc.stdin.fileno()), os.dup(proc.stdout.fileno())
        proc.stdin.close()
        proc.stdout.close()
        try:
            self._writer, _ = await loop.connect_write_pipe(_Quiet, open(w, "wb", buffering=0, closefd=False))  # noqa: SIM115
        except BaseException:
            os.close(w)
            os.close(r)
            raise
        try:
            self._reader, _ = await loop.connect_read_pipe(lambda: _Answers(self),
                                                           open(r, "rb", buffering=0, closefd=False))  # noqa: SIM115
        except BaseException:
            os.close(r)
            raise

    async def take(self, body: bytes, content_type: str, shape: Shape, received_ns: int) -> Taken:
        if self._link is None:  # the first request since the start (or a death): once, for all of them
            if self._proc is None:
                if self.resting:
                    raise WorkerGone("the parse worker died and is not yet started again")
                try:
                    self.spawn()
                except OSError as exc:
                    self._died_at = time.monotonic()
                    raise WorkerGone(f"the parse worker could not be started: {exc}") from exc
            self._link = asyncio.ensure_future(self._connect())
        link = self._link
        try:
            await link
        except OSError as exc:  # the pipes could not be taken: start afresh (once, by the first to see it)
            if self._link is link:
                self._lost()
            raise WorkerGone(f"the parse worker's pipes failed: {exc}") from exc
        if self._writer is None:
            raise WorkerGone("the parse worker died before it took the request")
        rid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (fut, time.monotonic())
        flags = shape.value | (NDJSON if "ndjson" in content_type else 0)
        self._writer.write(REQUEST.pack(rid, received_ns, flags, len(body)))
        self._writer.write(body)
        return await fut

    def _received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        while len(buf) - at >= ANSWER.size:
            rid, kind, events, length = ANSWER.unpack_from(buf, at)
            end = at + ANSWER.size + length
            if len(buf) < end:
                break
            payload = bytes(buf[at + ANSWER.size:end])
            at = end
            if kind == READY:
                continue
            fut, _sent = self._waiting.pop(rid, (None, 0.0))
            if fut is None or fut.done():
                continue
            try:
                fut.set_result(_answer(kind, events, payload))
            except (BodyError, SerializationError) as exc:
                fut.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - a frame the agent cannot read: that request fails
                fut.set_exception(SerializationError(f"the parse worker's answer is unreadable: {exc}"))
        del buf[:at]

    def _lost(self) -> None:
        """The pipe closed (the worker died or is stopping) or could not be taken: what is in flight
        fails with WorkerGone; a death is logged and counted."""
        proc, self._proc = self._proc, None
        for t in (self._writer, self._reader):
            if t is not None:
                t.close()
        self._writer = self._reader = None
        self._link = None
        waiting, self._waiting = self._waiting, {}
        for fut, _sent in waiting.values():
            if not fut.done():
                fut.set_exception(WorkerGone("the parse worker died with the request"))
        if proc is None or self._detaching:
            self._proc = proc
            return
        self._died_at = time.monotonic()
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=0.5)  # the pipe closes as it exits: this is at once
        if code is None:
            with contextlib.suppress(PermissionError):  # (see check: it ends itself)
                proc.kill()
                code = proc.wait()
        how = "still exiting" if code is None else f"signal {-code}" if code < 0 else f"status {code}"
        log.warning("the parse worker (pid %d) died (%s) with %d requests in flight (answered 503); "
                    "it starts again at the next request", proc.pid, how, len(waiting))
        self._on_death()

    def check(self, now: float) -> None:
        """On the event loop: a worker that has held a request for PARSE_TIMEOUT_S is stuck (a body no
        parse should take that long, or a stopped process): it is killed, and its requests fail."""
        if not self._waiting or self._proc is None or self._proc.pid == self._unkillable:
            return
        _fut, sent = next(iter(self._waiting.values()))  # answers come in order: the first is the oldest
        if now - sent > PARSE_TIMEOUT_S:
            log.warning("the parse worker (pid %d) has not answered a request for %.0f s: killing it",
                        self._proc.pid, now - sent)
            try:
                self._proc.kill()  # its pipe closes: _lost answers and counts
            except PermissionError:  # (a worker that became nobody, an agent that became its user since)
                log.warning("not allowed to kill the parse worker (pid %d): it ends itself %d s after a "
                            "request came", self._proc.pid, PARSE_TIMEOUT_S + 2)
                self._unkillable = self._proc.pid

    def detach(self) -> None:
        """On the event loop, when it takes no more requests: close the pipes' transports (what is still
        in flight fails with WorkerGone); the process runs on until ``kill``."""
        self._detaching = True
        for t in (self._writer, self._reader):
            if t is not None:
                t.close()

    def kill(self) -> None:
        """Stop the process (the agent is stopping; from any thread: the pipes, once the loop has them,
        are left to its transports, which see the end of input)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.terminate()
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except PermissionError:  # (one that became nobody, for an agent that became its user): the end of
            with contextlib.suppress(subprocess.TimeoutExpired):  # its input, below, stops it
                proc.wait(timeout=0)
        for f in (proc.stdin, proc.stdout):  # closed already if the loop took them
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()


def _answer(kind: int, events: int, payload: bytes) -> Taken:
    """A worker's answer, or the exception it stands for (ValueError if it is malformed)."""
    if kind == PARTS:
        if not 0 <= events * 16 <= len(payload):
            raise ValueError(f"{events} events do not fit {len(payload)} bytes")
        return Parts(payload[events * 16:], payload[:events * 16])
    if kind == ERRORS:
        listed = orjson.loads(payload)
        return Parsed([], [(int(i), str(r)) for i, r in listed["errors"]], int(listed["items"]))
    if kind == BODY:
        raise BodyError(payload.decode())
    if kind == FAILED:
        raise SerializationError(payload.decode())
    raise ValueError(f"unknown answer kind {kind}")


class _Quiet(asyncio.BaseProtocol):
    """The write side: its loss is the read side's news."""


class _Answers(asyncio.Protocol):
    def __init__(self, worker: _Worker) -> None:
        self._worker = worker

    def data_received(self, data: bytes) -> None:
        self._worker._received(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker._lost()


class ParseWorkers:
    """``count`` worker processes; requests go to the one with the fewest in flight, and at most
    ``max_bytes`` of bodies wait for them (WorkersBusy beyond)."""

    def __init__(self, count: int, setup: Setup, on_death: Callable[[], None], max_bytes: int,
                 command: Command = python_module) -> None:
        """``command``: how to start the worker's interpreter (``privileges.CodeDirs.command`` once the
        agent may have become a user that cannot reach its own)."""
        text = json.dumps({"schema": setup.schema, "schema_id": setup.schema_id, "consts": setup.consts,
                           "agent_pid": os.getpid()}).encode()
        self._workers = [_Worker(text, on_death, command) for _ in range(count)]
        self._max_bytes = max_bytes
        self._bytes = 0

    def start(self) -> None:
        """Start every worker and wait until each can take bodies (HdrlogError if one cannot)."""
        try:
            for w in self._workers:
                w.spawn()
            for w in self._workers:
                w.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        log.info("%d parse worker(s) take the ingest's bodies (pids %s)", len(self._workers),
                 ", ".join(str(w.pid) for w in self._workers))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    async def take(self, body: bytes, content_type: str, shape: Shape, received_ns: int) -> Taken:
        if self._bytes and self._bytes + len(body) > self._max_bytes:
            raise WorkersBusy("too many request bodies are waiting to be parsed; retry later")
        ready = [w for w in self._workers if not w.resting] or self._workers  # a dead one says so
        worker = min(ready, key=lambda w: w.in_flight)
        self._bytes += len(body)
        try:
            return await worker.take(body, content_type, shape, received_ns)
        finally:
            self._bytes -= len(body)

    def check(self) -> None:
        """Kill the workers that are stuck (``_Worker.check``); the server calls it every few tenths of a
        second, on the event loop."""
        now = time.monotonic()
        for w in self._workers:
            w.check(now)

    async def detach(self) -> None:
        """Let go of the workers' pipes, on the event loop, once the server takes no more requests."""
        for w in self._workers:
            w.detach()
        await asyncio.sleep(0)  # the transports close in the loop's next round

    def close(self) -> None:
        """Stop every worker (from any thread, after ``detach``)."""
        for w in self._workers:
            w.kill()


Parser = InlineParser | ParseWorkers


# -- the worker's side --------------------------------------------------------------------


def _read_exactly(src: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes, or None at the end of input (the agent closed the pipe or died)."""
    data = src.read(n)
    if len(data) < n:
        return None
    return data


def _drop_privileges(agent_pid: int) -> None:
    """As root, become nobody; no capability, no way to gain one; die with the agent (``agent_pid``).
    (An agent that became its ``user`` starts workers as that user: they keep it.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if os.getuid() == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)  # leaving uid 0 clears the permitted and effective capabilities
        except OSError as exc:  # no CAP_SETUID/CAP_SETGID (a container's), or nobody unmapped: capset below
            log.warning("keeps uid 0 (%s) but holds no capability", exc.strerror or exc)
    # after the uid change, which clears the death signal
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != agent_pid:  # the agent died before the line above
        os._exit(0)
    no_new_privs()
    capset(effective=0, permitted=0, inheritable=0)


def serve(src: BinaryIO, dst: BinaryIO) -> None:
    """The worker's loop: setup, READY, then a body in, an answer out, until the input ends."""
    head = _read_exactly(src, SETUP.size)
    if head is None:
        return
    text = _read_exactly(src, SETUP.unpack(head)[0])
    if text is None:
        return
    raw = json.loads(text)
    encoder = Setup(raw["schema"], raw["schema_id"], raw["consts"]).encoder()
    values = Values()
    for shape in Shape:  # every lazy import done while the files are still readable
        take_body(WARM_UP, "application/json", shape, 0, Values(), encoder)
    _drop_privileges(raw["agent_pid"])
    dst.write(ANSWER.pack(0, READY, 0, 0))
    dst.flush()
    while (head := _read_exactly(src, REQUEST.size)) is not None:
        rid, received_ns, flags, length = REQUEST.unpack(head)
        body = _read_exactly(src, length)
        if body is None:
            return
        events, kind = 0, PARTS
        # its own deadline too: an agent that became another user may not be able to kill it (SIGALRM's
        # default action ends the process, even inside C code); a little later than the agent's own check
        signal.setitimer(signal.ITIMER_REAL, PARSE_TIMEOUT_S + 2)
        try:
            taken = take_body(body, "application/x-ndjson" if flags & NDJSON else "", Shape(flags & ~NDJSON),
                              received_ns, values, encoder)
            if isinstance(taken, Parts):
                events, out = taken.count, taken.cuts + taken.blob
            else:
                kind, out = ERRORS, orjson.dumps({"items": taken.items, "errors": taken.errors})
        except BodyError as exc:
            kind, out = BODY, str(exc).encode()
        except Exception as exc:  # noqa: BLE001 - a bug: the agent answers 500 and logs it; the worker goes on
            log.exception("parsing a body failed")
            kind, out = FAILED, f"{type(exc).__name__}: {exc}".encode()
        signal.setitimer(signal.ITIMER_REAL, 0)
        dst.write(ANSWER.pack(rid, kind, events, len(out)))
        dst.write(out)
        dst.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when its workers stop (its input ends)
    logging.basicConfig(level=logging.WARNING, format="hdrlog parse worker: %(levelname)s %(message)s")
    out = os.fdopen(os.dup(1), "wb")  # the answers; anything printed by mistake goes to stderr instead
    os.dup2(2, 1)
    try:
        serve(sys.stdin.buffer, out)
    except BrokenPipeError:
        pass
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise


if __name__ == "__main__":
    main()
