"""Bad input ends with one line naming the problem and a non-zero exit, never a traceback."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import run_hdrlog


def _one_line_error(res) -> str:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("hdrlog: error:")]
    assert len(errors) == 1, res.stderr
    return errors[0]


@pytest.mark.kernel
def test_bad_interface(root_required) -> None:
    res = run_hdrlog("agent", "--iface", "nosuch0", "--stdout", "--duration", "1")
    assert _one_line_error(res) == "hdrlog: error: no such network interface: 'nosuch0'"


@pytest.mark.kernel
def test_missing_privilege(veth) -> None:
    # root, but with every capability dropped from the bounding and inheritable sets
    import subprocess
    import sys

    from tests.conftest import ROOT
    res = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "producer",
         "agent", "--iface", veth.host_if, "--stdout", "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = _one_line_error(res)
    assert "capturing needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN" in line


@pytest.mark.stack
def test_unreachable_registry(veth, stack) -> None:
    res = run_hdrlog("agent", "--iface", veth.host_if, "--schema-registry",
                     "http://127.0.0.1:9/apis/ccompat/v7", "--connect-timeout", "1",
                     "--bootstrap-servers", stack.bootstrap_servers, "--duration", "1")
    assert _one_line_error(res).startswith(
        "hdrlog: error: cannot reach schema registry at http://127.0.0.1:9/apis/ccompat/v7")


#: registries that answer what no registry should: (status, content type, body, retried, the error's words)
HOSTILE_REGISTRY = {
    "5xx JSON": (500, "application/json", b'{"error_code": 50001, "message": "storage is down"}', True,
                 "refused registering {subject}: storage is down (HTTP 500)"),
    "5xx HTML": (502, "text/html", b"<html><head><title>502 Bad Gateway</title></head><body>...</body></html>",
                 True, "refused registering {subject}: 502 Bad Gateway (HTTP 502)"),
    "not JSON": (200, "application/json", bytes(range(256)) * 4, False,
                 "answered registering {subject} with something unexpected"),
    "a list": (200, "application/json", b"[1, 2, 3]", False,
               "answered registering {subject} with something unexpected: TypeError"),
    "no id": (200, "application/json", b'{"unexpected": true}', False,
              "answered registering {subject} with something unexpected: ValueError: the schema id is None"),
    "a text id": (200, "application/json", b'{"id": "seven"}', False,
                  "answered registering {subject} with something unexpected: ValueError: the schema id is 'seven'"),
}


@pytest.mark.stack
@pytest.mark.parametrize("answer", list(HOSTILE_REGISTRY))
def test_a_registry_that_answers_garbage_or_5xx(veth, stack, answer: str) -> None:
    """One line naming what it answered, a bounded time, no traceback: 5xx is retried until the connect
    timeout (the requests are counted), an answer of the wrong shape is not retried at all."""
    import time

    from tests.fake_http import serve_raw

    status, content_type, body, retried, words = HOSTILE_REGISTRY[answer]
    topic = f"hdrlog.test.hostile.{uuid.uuid4().hex[:8]}"
    with serve_raw(lambda _req: (status, content_type, body)) as registry:
        started = time.monotonic()
        res = run_hdrlog("agent", "--iface", veth.host_if, "--schema-registry", f"{registry.url}/apis/ccompat/v7",
                         "--connect-timeout", "3", "--bootstrap-servers", stack.bootstrap_servers,
                         "--topic", topic, "--duration", "1", timeout=60)
        took = time.monotonic() - started
        posts = [r for r in registry.requests if r.method == "POST"]
    line = _one_line_error(res)
    assert res.returncode == 1
    assert words.format(subject=f"{topic}-value") in line, line
    assert line.startswith(f"hdrlog: error: schema registry at {registry.url}/apis/ccompat/v7 "), line
    assert "capturing" not in res.stderr
    if retried:
        # (the registry client's own retries are off: every attempt is one request, and each retry says so)
        assert len(posts) >= 2 and res.stderr.count("retrying in") == len(posts) - 1, res.stderr
        assert took < 3 + 20
    else:
        assert len(posts) == 1, res.stderr
        assert "retrying in" not in res.stderr and took < 20


@pytest.mark.stack
def test_unreachable_broker(veth, stack) -> None:
    res = run_hdrlog("agent", "--iface", veth.host_if, "--schema-registry", stack.registry_url,
                     "--bootstrap-servers", "127.0.0.1:9", "--connect-timeout", "1",
                     "--topic", f"hdrlog.test.unreachable.{uuid.uuid4().hex[:8]}", "--duration", "1")
    assert _one_line_error(res).startswith("hdrlog: error: cannot reach Kafka at 127.0.0.1:9")


def test_bad_config_value_exit_2() -> None:
    res = run_hdrlog("agent", "--iface", "lo", "--ringbuf-pages", "1000", "--stdout")
    assert res.returncode == 2
    assert _one_line_error(res) == (
        "hdrlog: error: invalid value for capture.ringbuf_pages: 1000 is not a power of two")


@pytest.mark.kernel
def test_signal_during_start_up_retries_ends_at_once(veth) -> None:
    """SIGTERM while the agent still retries an absent registry: it stops now, not after the timeout."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, wait_for
    proc = subprocess.Popen([sys.executable, "-m", "producer", "--log-format", "json", "agent", "--iface",
                             veth.host_if, "--schema-registry", "http://127.0.0.1:9/apis/ccompat/v7",
                             "--connect-timeout", "60"], cwd=ROOT, text=True, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    wait_for(lambda: "retrying in" in proc.stderr.readline(), 30, "a start-up retry")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(30) == 130
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in err and "hdrlog: interrupted" in err
