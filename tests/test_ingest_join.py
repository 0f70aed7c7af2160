"""The join: a gateway's access-log line and the packets of its TCP connection share one Community ID.

A local HTTP service (Python's http.server, standing in for a gateway) runs
on the host side of a veth pair and posts each request's access log, in the
README's APISIX ``log_format`` (client and server address and port from its
own socket), to the agent's ``/api/v1/logging/apisix``.  curl in the peer
namespace makes the requests.  The agent captures the veth; ``hdrlog
consume`` turns both topics into ECS; every log event must find the packets of
its connection (both directions, the SYN among them) by
``network.community_id`` alone, and no packet of another connection.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.test_ingest import TOKEN, consumed

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

PORT = 8089
REQUESTS = 3

SERVICE = r"""
import json, sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

host, port, agent, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        client, server = self.client_address, self.connection.getsockname()
        line = {"client_ip": client[0], "client_port": str(client[1]), "server_addr": server[0],
                "server_port": str(server[1]), "method": self.command, "uri": self.path, "status": "200",
                "user_agent": self.headers.get("User-Agent", "")}
        req = urllib.request.Request(agent, data=json.dumps(line).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.status == 202, answer.status

    def log_message(self, *args):
        pass

server = HTTPServer((host, port), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def test_an_access_log_line_joins_its_packets_by_community_id(veth, stack, start_agent, tmp_path: Path) -> None:
    from tests.test_ingest import _agent

    agent = _agent(start_agent, veth, stack, tmp_path, "disk")
    logs_topic = agent.logs_topic
    headers_topic = f"hdrlog.test.join.{uuid.uuid4().hex[:8]}"
    agent.stop()  # again with a header topic of its own, so the join sees only this test's packets
    agent = start_agent(veth.host_if, "--config", str(tmp_path / "agent.toml"), "--bootstrap-servers",
                        stack.bootstrap_servers, "--schema-registry", stack.registry_url, "--topic", headers_topic,
                        "--port", str(PORT), "--drop-non-ip")
    agent.wait_attached()
    service = subprocess.Popen([sys.executable, "-c", SERVICE, veth.host_ip, str(PORT),
                                agent.url + "/api/v1/logging/apisix", TOKEN], text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert service.stdout is not None and service.stdout.readline().strip() == "ready"
        for i in range(REQUESTS):  # a new connection each: curl exits between them
            got = veth.exec(["curl", "-sS", "--max-time", "10", f"http://{veth.host_ip}:{PORT}/orders/{i}"])
            assert got.stdout == "ok\n"
    finally:
        service.terminate()
        _out, service_err = service.communicate(timeout=30)
    assert service.returncode in (0, -15), service_err
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err

    logs = consumed(stack, logs_topic, "ecs", tmp_path / "logs")
    packets = consumed(stack, headers_topic, "ecs", tmp_path / "packets")
    assert len(logs) == REQUESTS, logs
    by_flow: dict[str, list[dict[str, Any]]] = {}
    for p in packets:
        by_flow.setdefault(p["network"]["community_id"], []).append(p)
    assert len(by_flow) == REQUESTS  # only the test's connections are recorded (--port, --drop-non-ip)
    for log in logs:
        mine = by_flow[log["network"]["community_id"]]  # the join: one equality
        client = (log["source"]["ip"], log["source"]["port"])
        assert {(p["source"]["ip"], p["source"]["port"]) for p in mine} == {client, (veth.host_ip, PORT)}
        assert {p["network"]["direction"] for p in mine} == {"ingress", "egress"}
        assert any(p["hdrlog"]["tcp"]["flag_names"] == ["SYN"] for p in mine)  # the connection's first packet
        assert log["url"]["original"] in {f"/orders/{i}" for i in range(REQUESTS)}
