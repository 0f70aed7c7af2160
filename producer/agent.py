"""The agent: runs the stages it is given, stops them in order, accounts for every record.

It builds nothing (``pipeline.build`` does, from the config) and holds no
global state; tests give it in-memory stages and a clock.

    run:  start publisher, encoder, batcher, source threads -> attach hooks -> give up privileges
          (``after_attach``) -> watch for new links -> ready
          -> until stop / duration / a stage fails: serve SIGHUP reloads and periodic tasks
    stop: detach -> the source drains the rest and closes its channel -> each stage
          finishes its input and closes the next -> the publisher delivers until the
          buffer is exhausted or ``flush_timeout_s`` has passed

The whole exit is bounded by ``flush_timeout_s``: at the deadline every blocked
hand-over gives up (``Drop.UNFLUSHED_AT_EXIT``), a memory buffer's leftovers
are counted the same way, and a disk buffer keeps its leftovers for the next
start (``Stat.LEFT_IN_BUFFER``).  If a stage fails, the others stop as on
exit, what can no longer move is ``Drop.AFTER_FAILURE``, and ``run`` raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from producer.buffer.base import Buffer
from producer.channel import Cancel, Channel
from producer.errors import HdrlogError
from producer.publish.sinks import Publisher
from producer.telemetry.events import Drop, Stat, Telemetry

log = logging.getLogger(__name__)


class Stage(Protocol):
    """A thread of the pipeline: ``run`` returns when its input has ended (and has closed its output)."""

    name: str

    def run(self) -> None: ...


class HookLifecycle(Protocol):
    def attach_all(self) -> list[str]: ...
    def watch(self) -> None: ...  # attach links that appeared since the last call (main thread, each tick)
    def detach_all(self) -> None: ...
    @property
    def attached(self) -> list[str]: ...


def _name_native_thread(name: str) -> None:
    """The thread's name as the kernel shows it (``/proc/PID/task/TID/comm``, ``top -H``; 15 bytes)."""
    import ctypes

    ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


@dataclass
class Periodic:
    """Something the agent does every ``every_s`` seconds while it runs (stats, status line)."""

    every_s: float
    call: Callable[[], None]
    next_at: float = 0.0


@dataclass
class AgentParts:
    """Everything the agent runs, built by pipeline.build (or by a test)."""

    hooks: HookLifecycle
    source: Stage
    stages: Sequence[Stage]  # in data-flow order, after the source
    publisher: Publisher
    buffer: Buffer
    telemetry: Telemetry
    cancel: Cancel
    detached: threading.Event
    channels: Sequence[Channel[Any]]
    kernel_counters: Callable[[], dict[str, int]]
    reload: Callable[[], None] | None = None
    after_attach: Callable[[], str] | None = None  # gives up privileges; says what is held now
    periodic: list[Periodic] = field(default_factory=list)
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@dataclass
class AgentReport:
    """What the agent did: kernel and user-space counters at exit."""

    kernel: dict[str, int] = field(default_factory=dict)
    user: dict[str, int] = field(default_factory=dict)
    interfaces: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"interfaces": self.interfaces, "kernel": self.kernel, "agent": self.user, **self.extra}


class Agent:
    def __init__(self, parts: AgentParts, *, duration_s: float | None, flush_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.parts = parts
        self._duration = duration_s
        self._flush = flush_timeout_s
        self._clock = clock
        self._failure: BaseException | None = None
        self._wake = threading.Event()
        self.ready = threading.Event()  # set once every hook is attached and privileges are given up
        self.attached = threading.Event()  # every hook attached: from here a stop is an orderly one (cli)
        self.reload_requested = threading.Event()  # SIGHUP
        self.report_extra: Callable[[], dict[str, Any]] = dict

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self.parts.cancel.set(Drop.AFTER_FAILURE)
        self._wake.set()

    def _thread(self, stage: Any, name: str) -> threading.Thread:
        def body() -> None:
            _name_native_thread(f"hdrlog-{name}")
            try:
                stage.run()
            except BaseException as exc:  # noqa: BLE001 - top of a thread: record, stop the agent
                log.exception("the %s stage stopped", name)
                self._fail(exc)

        t = threading.Thread(target=body, name=f"hdrlog-{name}", daemon=True)
        t.start()
        return t

    def run(self, stop: threading.Event) -> AgentReport:
        p = self.parts
        with p.resources:
            threads = [self._thread(p.publisher, p.publisher.name)]
            threads += [self._thread(s, s.name) for s in reversed(p.stages)]
            threads.append(self._thread(p.source, p.source.name))
            threads.reverse()  # source first: the order they are joined in
            try:
                p.hooks.attach_all()
                self.attached.set()
                if p.after_attach is not None:
                    log.info("gave up what capturing no longer needs: %s", p.after_attach())
                self.ready.set()
                self._wait(stop)
            finally:
                p.hooks.detach_all()
                p.detached.set()
                self._stop_in_order(threads)
            report = AgentReport(p.kernel_counters(), p.telemetry.snapshot(), p.hooks.attached,
                                 self.report_extra())
        if self._failure is not None:
            log.error("stopped by a failure; counters: %s", json.dumps(report.as_dict()))
            if isinstance(self._failure, HdrlogError):
                raise self._failure
            raise HdrlogError(f"agent stopped: {self._failure}") from self._failure
        return report

    def _wait(self, stop: threading.Event) -> None:
        deadline = None if self._duration is None else self._clock() + self._duration
        now = self._clock()
        for task in self.parts.periodic:
            task.next_at = now + task.every_s
        while not stop.is_set() and self._failure is None:
            now = self._clock()
            if deadline is not None and now >= deadline:
                return
            if self.reload_requested.is_set() and self.parts.reload is not None:
                self.reload_requested.clear()
                self.parts.reload()
            try:
                self.parts.hooks.watch()  # here: the main thread keeps CAP_NET_ADMIN, no other needs it
            except Exception:  # noqa: BLE001 - a link that fails to attach must not stop capture
                log.exception("attaching links that appeared")
            for task in self.parts.periodic:
                if now >= task.next_at:
                    task.next_at += task.every_s
                    try:
                        task.call()
                    except Exception:  # noqa: BLE001 - telemetry must not stop capture
                        log.exception("periodic task failed")
            wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
            self._wake.wait(wait)

    def _stop_in_order(self, threads: list[threading.Thread]) -> None:
        """Join the stages in data-flow order within the exit deadline; account for what is left."""
        p = self.parts
        deadline = self._clock() + self._flush
        p.publisher.begin_exit(deadline)
        for t in threads:
            while t.is_alive():
                t.join(0.1)
                if self._clock() >= deadline:
                    p.cancel.set(Drop.UNFLUSHED_AT_EXIT)
                    p.publisher.stop()
        reason = p.cancel.reason if p.cancel.is_set() else Drop.UNFLUSHED_AT_EXIT
        for channel in p.channels:
            left = sum(len(item) for item in channel.abandon())
            p.telemetry.drop(reason, left, f"still in the {channel.name} channel at exit")
        if p.buffer.kind == "disk":
            for source, left in p.buffer.records_by_source().items():
                p.telemetry.add(Stat.LEFT_IN_BUFFER, left, source)
            if p.buffer.state().records:
                log.info("the disk buffer keeps %d undelivered records and log events for the next start",
                         p.buffer.state().records)
        else:
            for source, lost in p.buffer.drain_all().items():
                p.telemetry.drop(reason, lost, "not delivered by the exit deadline", source)
        p.publisher.close()
