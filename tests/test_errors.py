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
