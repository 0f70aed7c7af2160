"""The soak: a steady load for a while, the broker restarted in the middle, and nothing grows or goes missing.

One agent with the disk buffer captures RATE UDP datagrams a second across a
veth pair and takes INGEST_RATE log events a second over HTTP (one a
request), while /metrics is scraped every second, for SOAK_S seconds; at
half-time the broker is SIGKILLed and started again.  Every second the
agent's RSS (its parse worker's included) and open descriptors are sampled.

At the end: the buffer is empty; every record the kernel emitted is in Kafka
(gapless, unique by identity) and every log event answered 202 is there once;
after warm-up (the first quarter) the RSS stays within RSS_BOUND_MIB of its
level before the restart, and the open descriptors come back to their count
before it.  ``make test`` runs 60 s; ``make test-long`` 600 s, whose figures
are in BENCHMARKS.md ("The soak").
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from producer.bench.ingest import agent_rss_kib
from producer.devstack import LocalStack
from tests.conftest import expand, read_topic, reconcile, summary_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

RATE, INGEST_RATE = 2_000, 20
SOAK_S, LONG_SOAK_S = 60.0, 600.0
#: how far the RSS may rise, after warm-up, above its highest before the broker restart
RSS_BOUND_MIB = 24.0


class Sampler:
    """Every second: (seconds since start, RSS MiB, open descriptors) of the agent; /metrics scraped."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.samples: list[tuple[float, float, int]] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            self.samples.append((time.monotonic() - self._t0, agent_rss_kib(self.pid) / 1024, fds))
            if httpx2.get(self.url + "/metrics", timeout=10).status_code == 200:
                self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Poster:
    """``rate`` log events a second, one a request, each with a message of its own; the answers kept."""

    def __init__(self, url: str, rate: int) -> None:
        self.url, self.rate = url + "/api/v1/logging", rate
        self.accepted: list[str] = []
        self.other: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        with httpx2.Client(timeout=30) as client:
            while not self._stop.wait(1.0 / self.rate):  # a pace, not a synchronisation
                message = f"soak-{n}"
                n += 1
                got = client.post(self.url, content=orjson.dumps({"message": message}),
                                  headers={"content-type": "application/json"})
                if got.status_code == 202:
                    self.accepted.append(message)
                else:
                    self.other.append((got.status_code, got.text))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _soak(net: Any, stack: Any, start_agent: Any, tmp_path: Path, seconds: float) -> dict[str, Any]:
    topic = f"hdrlog.test.soak.{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[buffer]\ntype = "disk"\n[kafka]\nretry_backoff_s = 0.5\n[ingest]\ntopic = "{topic}.logs"\n')
    agent = start_agent(net.host_if, "--config", str(cfg), "--bootstrap-servers", stack.bootstrap_servers,
                        "--schema-registry", stack.registry_url, "--topic", topic)
    agent.wait_attached()
    local = LocalStack(stack)
    sender = net.udp(net.host_ip, 6700, seconds=seconds, rate=RATE)
    sampler = Sampler(agent.proc.pid, agent.url)
    poster = Poster(agent.url, INGEST_RATE)
    started = time.monotonic()
    try:
        wait_for(lambda: time.monotonic() - started >= seconds / 2, seconds, "half-time")
        restart_at = time.monotonic() - started
        os.kill(local.status().kafka.pid, signal.SIGKILL)
        wait_for(lambda: agent.status()["delivery"]["state"] == "outage", 60, "the outage in the status")
        local.up()
        wait_for(lambda: agent.status()["delivery"]["state"] == "ok", 120, "delivery to resume")
        out, err = sender.communicate(timeout=seconds + 60)  # the sender's own clock ends the run
        assert int(out) > 0, err
    finally:
        if sender.poll() is None:
            sender.terminate()
            sender.communicate(timeout=30)
        sampler.stop()  # first: the poster's connection is one of the descriptors counted
        poster.stop()
    wait_for(lambda: agent.status()["buffer"]["records"] == 0, 120, "the buffer to empty")
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    assert poster.other == [] and len(poster.accepted) > INGEST_RATE * seconds / 2, poster.other[:3]
    s = summary_of(err)
    k, a, ing = s["kernel"], s["agent"], s["ingest"]
    assert k["seen"] == k["filtered"] + k["sampled_out"] + k["emitted"] + k["ringbuf_reserve_failed"]
    assert k["ringbuf_reserve_failed"] == 0 and a["drained"] == k["emitted"] == a["delivered"], (k, a)
    assert a["left_in_buffer"] == 0 and not any(v for n, v in a.items() if n.startswith("dropped_")), a
    assert ing["accepted"] == len(poster.accepted) == ing["delivered"] and ing["left_in_buffer"] == 0, ing
    records = expand(stack.registry_url, read_topic(stack.bootstrap_servers, topic))
    counts = reconcile(records, {s["capture_id"]: k["emitted"]})
    from tests.test_ingest import log_events

    messages = sorted(e["message"] for _m, e in log_events(stack, f"{topic}.logs"))
    assert messages == sorted(poster.accepted)

    warm = [x for x in sampler.samples if x[0] >= seconds / 4]
    before = [x for x in warm if x[0] < restart_at]
    after = [x for x in warm if x[0] >= restart_at]
    assert before and after, sampler.samples
    rss_before, rss_after = max(x[1] for x in before), max(x[1] for x in after)
    fds_before = statistics.mode(x[2] for x in before)
    fds_end = sampler.samples[-1][2]
    summary = {"seconds": seconds, "records": k["emitted"], "unique_in_kafka": counts["unique"],
               "log_events": len(messages), "scrapes": sampler.scrapes,
               "rss_mib": (min(x[1] for x in warm), rss_before, rss_after),
               "rss_lowest_at_s": round(min(warm, key=lambda x: x[1])[0]),
               "rss_mib_each_minute": [round(x[1], 1) for x in sampler.samples[59::60]],
               "fds": (min(x[2] for x in warm), fds_before, max(x[2] for x in warm), fds_end),
               "retries": a["delivery_retries"]}
    assert rss_after <= rss_before + RSS_BOUND_MIB, summary
    assert fds_end == fds_before, summary  # the broker's connections came back, nothing else stayed open
    assert sampler.scrapes >= len(sampler.samples) - 2, summary
    return summary


def test_soak_with_a_broker_restart(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path) -> None:
    udp_sinks(6700)
    print(f"\nsoak: {_soak(quiet_veth, stack, start_agent, tmp_path, SOAK_S)}")


@pytest.mark.long
@pytest.mark.timeout(LONG_SOAK_S + 600)
def test_soak_with_a_broker_restart_long(quiet_veth, stack, start_agent, udp_sinks, tmp_path: Path) -> None:
    udp_sinks(6700)
    print(f"\nsoak: {_soak(quiet_veth, stack, start_agent, tmp_path, LONG_SOAK_S)}")
