"""LogEvent (the agent's HTTP ingest, schemas/LogEvent.avsc) -> events of every output format.

The header records' Community ID and the log events' are computed by the same
function (``Texts.flow``, community_id.py) from fields of the same names and
encodings, so a SIEM joins a gateway's access log with the packets of its
connection by one equality: ECS ``network.community_id``, OCSF
``connection_info.community_uid``, CIM ``flow_id``, raw ``community_id``.

* ECS: ``event.dataset: hdrlog.logs``; with HTTP fields ``event.category: [web]``,
  ``event.type: [access]``, ``http.*``, ``url.original``, ``user_agent.original``;
  ``log.level``, ``message``, ``source``/``destination``, ``event.duration`` (ns),
  ``event.created`` (when the agent received it); attributes as ``labels``.
* OCSF 1.8 HTTP Activity (class 4002): ``activity_id`` from the method (Get 3,
  Post 6, ...; 0 Unknown without one, 99 Other for the rest), ``http_request``,
  ``http_response``, ``duration`` (ms).  An event without any HTTP field is
  still class 4002, activity Unknown, without ``http_request``/``http_response``
  (OCSF wants one of them; the event has neither to give).
* CIM (Web data model): ``src``/``dest``, ``http_method``, ``url``, ``status``,
  ``http_user_agent``, ``bytes_in``/``bytes_out``, ``response_time`` (ms).

The event id hashes the event's identity (host, agent instance, sequence), so
a re-delivered event overwrites itself in sinks that upsert by id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from producer import __version__
from producer.consumer.mapping import (
    ECS_VERSION,
    IANA_KEYWORDS,
    OCSF_VERSION,
    MappingError,
    Texts,
    present,
    prune,
)

DATASET = "hdrlog.logs"
OCSF_CLASS_UID, OCSF_CATEGORY_UID = 4002, 4
OCSF_METHODS = {"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7, "TRACE": 8,
                "PATCH": 9}
OCSF_ACTIVITY = {0: "Unknown", 1: "Connect", 2: "Delete", 3: "Get", 4: "Head", 5: "Options", 6: "Post", 7: "Put",
                 8: "Trace", 9: "Patch", 99: "Other"}


def log_event_id(r: dict[str, Any]) -> str:
    """32 hex digits: the first 16 bytes of SHA-256 of ``log\\0host\\0instance\\0sequence``."""
    key = f"log\x00{r['host_id']}\x00{r['agent_instance']}\x00{r['sequence']}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def map_logs(records: Sequence[dict[str, Any]], one: Callable[[dict[str, Any], str], dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """``one(record, event_id)`` for each LogEvent; any failure becomes a MappingError."""
    out = []
    for i, r in enumerate(records):
        try:
            out.append(one(r, log_event_id(r)))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise MappingError(f"log event {i} cannot be mapped: {type(exc).__name__}: {exc}") from exc
    return out


def _ip_type(r: dict[str, Any]) -> str | None:
    addr = r["src_ip"] if r["src_ip"] is not None else r["dst_ip"]
    return None if addr is None else "ipv4" if len(addr) == 4 else "ipv6"


def _has_http(r: dict[str, Any]) -> bool:
    return any(r[k] is not None for k in ("http_method", "http_url", "http_status", "http_user_agent"))


def ecs_log(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    src, dst, proto, status = t.ip(r["src_ip"]), t.ip(r["dst_ip"]), r["ip_proto"], r["http_status"]
    http = _has_http(r)
    doc = {
        "@timestamp": t.time(r["timestamp_ns"]),
        "ecs": {"version": ECS_VERSION},
        "message": r["message"],
        "event": {"kind": "event", "category": ["web"] if http else None, "type": ["access"] if http else ["info"],
                  "dataset": DATASET, "module": "hdrlog", "id": eid, "created": t.time(r["received_ns"]),
                  "duration": r["duration_ns"],
                  "outcome": None if status is None else "failure" if status >= 400 else "success"},
        "log": {"level": r["level"]},
        "host": {"name": r["host_id"]},
        "observer": {"hostname": r["host_id"], "type": "sensor", "product": "hdrlog"},
        "source": {"ip": src, "port": r["src_port"]},
        "destination": {"ip": dst, "port": r["dst_port"]},
        "network": {"transport": IANA_KEYWORDS.get(proto) if proto is not None else None,
                    "iana_number": str(proto) if proto is not None else None, "type": _ip_type(r),
                    "community_id": t.flow(r)},
        "http": {"request": {"method": r["http_method"], "bytes": r["http_request_bytes"]},
                 "response": {"status_code": status, "bytes": r["http_response_bytes"]}},
        "url": {"original": r["http_url"]},
        "user_agent": {"original": r["http_user_agent"]},
        "labels": {k.replace(".", "_"): v for k, v in r["attributes"].items()},
        "hdrlog": {"source": str(r["source"]).lower(), "timestamp_ns": r["timestamp_ns"],
                   "received_ns": r["received_ns"], "agent_instance": r["agent_instance"], "sequence": r["sequence"]},
    }
    if src is not None or dst is not None:
        doc["related"] = {"ip": [a for a in dict.fromkeys((src, dst)) if a is not None]}
    return prune(doc)


def _ocsf_url(url: str | None) -> dict[str, Any] | None:
    if url is None:
        return None
    if url.startswith("/"):
        path, _, query = url.partition("?")
        return present(path=path, query_string=query or None)
    return {"url_string": url}


def ocsf_http(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    method, status, proto = r["http_method"], r["http_status"], r["ip_proto"]
    activity = 0 if method is None else OCSF_METHODS.get(method.upper(), 99)
    duration = r["duration_ns"]
    doc: dict[str, Any] = {
        "class_uid": OCSF_CLASS_UID, "class_name": "HTTP Activity",
        "category_uid": OCSF_CATEGORY_UID, "category_name": "Network Activity",
        "activity_id": activity, "activity_name": OCSF_ACTIVITY[activity],
        "type_uid": OCSF_CLASS_UID * 100 + activity, "type_name": f"HTTP Activity: {OCSF_ACTIVITY[activity]}",
        "severity_id": 1, "severity": "Informational",
        "time": r["timestamp_ns"] // 1_000_000,
        "message": r["message"],
        "duration": None if duration is None else duration // 1_000_000,
        "metadata": {"version": OCSF_VERSION, "uid": eid, "profiles": ["host"], "log_name": DATASET,
                     "logged_time": r["received_ns"] // 1_000_000,
                     "product": {"name": "hdrlog", "vendor_name": "hdrlog", "version": __version__}},
        "device": {"hostname": r["host_id"], "type_id": 0, "type": "Unknown"},
        "src_endpoint": {"ip": t.ip(r["src_ip"]), "port": r["src_port"]},
        "dst_endpoint": {"ip": t.ip(r["dst_ip"]), "port": r["dst_port"]},
        "connection_info": None if proto is None and r["src_ip"] is None else {
            "direction_id": 0, "direction": "Unknown", "protocol_num": proto,
            "protocol_name": IANA_KEYWORDS.get(proto) if proto is not None else None, "community_uid": t.flow(r)},
        "http_request": {"http_method": method, "url": _ocsf_url(r["http_url"]), "user_agent": r["http_user_agent"],
                         "length": r["http_request_bytes"]},
        "http_response": None if status is None else {"code": status, "length": r["http_response_bytes"]},
        "unmapped": {"level": r["level"], "source": str(r["source"]).lower(), "attributes": r["attributes"] or None,
                     "timestamp_ns": r["timestamp_ns"], "received_ns": r["received_ns"],
                     "agent_instance": r["agent_instance"], "sequence": r["sequence"]},
    }
    return prune(doc)


def cim_web(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    src, dst, proto, duration = t.ip(r["src_ip"]), t.ip(r["dst_ip"]), r["ip_proto"], r["duration_ns"]
    return prune({
        "_time": r["timestamp_ns"] / 1e9, "event_id": eid, "vendor_product": "hdrlog", "dvc": r["host_id"],
        "message": r["message"], "log_level": r["level"], "sourcetype_hint": f"hdrlog:{str(r['source']).lower()}",
        "src": src, "src_ip": src, "src_port": r["src_port"], "dest": dst, "dest_ip": dst, "dest_port": r["dst_port"],
        "transport": IANA_KEYWORDS.get(proto) if proto is not None else None,
        "http_method": r["http_method"], "url": r["http_url"], "status": r["http_status"],
        "http_user_agent": r["http_user_agent"], "bytes_in": r["http_request_bytes"],
        "bytes_out": r["http_response_bytes"], "response_time": None if duration is None else duration / 1e6,
        "flow_id": t.flow(r), "attributes": r["attributes"] or None,
    })


def raw_log(r: dict[str, Any], eid: str, t: Texts) -> dict[str, Any]:
    return {**r, "src_ip": t.ip(r["src_ip"]), "dst_ip": t.ip(r["dst_ip"]), "event_id": eid,
            "community_id": t.flow(r)}
