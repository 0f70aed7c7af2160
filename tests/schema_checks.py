"""Checks of emitted events against published definitions (vendored under tests/data).

``ecs_problems``: every field outside our own ``hdrlog.*`` namespace must be
in ECS 9.4.0's published field list (tests/data/ecs/fields.csv) with a value of
its type (keyword, long, ip, date, boolean; an array exactly where ECS says
``array``), and the categorisation fields must hold allowed values.

``ocsf_problems``: the event is checked against the compiled OCSF 1.8.0
Network Activity class (tests/data/ocsf/network_activity.json): required
attributes present, "at least one of" constraints met, no attribute the class
(or a declared profile) does not define outside ``unmapped``, JSON types right
(objects recursively), enum values valid, and the type constraints (regex,
range, max length) of ip_t, mac_t, port_t, ... held.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"

#: ECS 9.4.0 schemas/event.yml allowed_values and schemas/network.yml expected_values
ECS_ALLOWED = {
    "event.kind": {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"},
    "event.category": {"api", "authentication", "configuration", "database", "driver", "email", "file", "host",
                       "iam", "intrusion_detection", "library", "malware", "network", "package", "process",
                       "registry", "session", "threat", "vulnerability", "web"},
    "event.type": {"access", "admin", "allowed", "change", "connection", "creation", "deletion", "denied",
                   "device", "end", "error", "group", "indicator", "info", "installation", "protocol", "start",
                   "user"},
    "network.direction": {"ingress", "egress", "inbound", "outbound", "internal", "external", "unknown"},
}
#: for event.category network, the event.type values ECS expects (schemas/event.yml)
ECS_NETWORK_TYPES = {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"}
OWN_NAMESPACE = "hdrlog."


@functools.cache
def ecs_fields() -> dict[str, dict[str, str]]:
    with open(DATA / "ecs" / "fields.csv", newline="", encoding="utf-8") as f:
        return {row["Field"]: row for row in csv.DictReader(f)}


def leaves(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf paths of a nested event (a list is a leaf)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(leaves(v, path + "."))
        else:
            out[path] = v
    return out


def _ecs_value_ok(typ: str, v: Any) -> bool:
    if typ in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
        return isinstance(v, str)
    if typ == "long":
        return isinstance(v, int) and not isinstance(v, bool)
    if typ == "boolean":
        return isinstance(v, bool)
    if typ == "ip":
        try:
            ipaddress.ip_address(v)
        except ValueError:
            return False
        return True
    if typ == "date":
        return isinstance(v, str) and bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", v))
    return False


def ecs_problems(event: dict[str, Any]) -> list[str]:
    fields = ecs_fields()
    problems = []
    for path, value in leaves(event).items():
        if path.startswith(OWN_NAMESPACE):
            continue
        spec = fields.get(path)
        if spec is None and path.startswith("labels.") and "." not in path[7:]:
            spec = {**fields["labels"], "Type": "keyword"}  # custom key/value pairs: keyword values, no dots in keys
        if spec is None:
            problems.append(f"{path}: not an ECS {next(iter(fields.values()))['ECS_Version']} field")
            continue
        is_array = "array" in spec["Normalization"]
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) != is_array:
            problems.append(f"{path}: {'must' if is_array else 'must not'} be an array")
        for v in values:
            if not _ecs_value_ok(spec["Type"], v):
                problems.append(f"{path}: {v!r} is not a valid {spec['Type']}")
            if path in ECS_ALLOWED and v not in ECS_ALLOWED[path]:
                problems.append(f"{path}: {v!r} is not an allowed value")
    if "network" in leaves(event).get("event.category", []):
        problems += [f"event.type: {t!r} is not expected for category network"
                     for t in leaves(event).get("event.type", []) if t not in ECS_NETWORK_TYPES]
    if not isinstance(event.get("@timestamp"), str):
        problems.append("@timestamp missing")
    else:
        datetime.fromisoformat(event["@timestamp"][:26] + "Z")
    return problems


@functools.cache
def ocsf_class(name: str = "network_activity") -> dict[str, Any]:
    return dict(json.loads((DATA / "ocsf" / f"{name}.json").read_text(encoding="utf-8")))


def _ocsf_scalar(path: str, spec: dict[str, Any], v: Any, types: dict[str, Any]) -> list[str]:
    jt = spec["json_type"]
    ok = {"integer": isinstance(v, int) and not isinstance(v, bool), "string": isinstance(v, str),
          "boolean": isinstance(v, bool), "number": isinstance(v, (int, float)) and not isinstance(v, bool)}.get(jt)
    if not ok:
        return [f"{path}: {v!r} is not {jt} ({spec['type']})"]
    problems = []
    if "enum" in spec and str(v) not in spec["enum"]:
        problems.append(f"{path}: {v!r} is not in the enum {sorted(spec['enum'])}")
    t = types.get(spec["type"], {})
    if "regex" in t and isinstance(v, str) and not re.search(t["regex"], v):
        problems.append(f"{path}: {v!r} does not match the {spec['type']} pattern")
    if "max_len" in t and isinstance(v, str) and len(v) > t["max_len"]:
        problems.append(f"{path}: longer than {t['max_len']}")
    if "range" in t and not t["range"][0] <= v <= t["range"][1]:
        problems.append(f"{path}: {v} outside {t['range']}")
    return problems


def _ocsf_object(path: str, doc: dict[str, Any], attrs: dict[str, Any], required: list[str],
                 constraints: dict[str, Any], cls: dict[str, Any]) -> list[str]:
    problems = [f"{path}{r}: required attribute missing" for r in required if r not in doc]
    for group in constraints.get("at_least_one", []) and [constraints["at_least_one"]]:
        if not any(k in doc for k in group):
            problems.append(f"{path or 'event'}: needs at least one of {group}")
    for key, value in doc.items():
        spec = attrs.get(key)
        where = f"{path}{key}"
        if spec is None:
            problems.append(f"{where}: not an attribute of {path.rstrip('.') or cls['class_name']}")
            continue
        if spec.get("object_type") == "object":  # free-form (unmapped)
            if not isinstance(value, dict):
                problems.append(f"{where}: must be an object")
            continue
        values = value if spec["is_array"] else [value]
        if spec["is_array"] and not isinstance(value, list):
            problems.append(f"{where}: must be an array")
            continue
        for v in values:
            if spec["json_type"] == "object":
                if not isinstance(v, dict):
                    problems.append(f"{where}: must be an object")
                    continue
                obj = cls["objects"][spec["object_type"]]
                problems += _ocsf_object(f"{where}.", v, obj["attributes"], obj.get("required_attributes", []),
                                         obj.get("constraints", {}), cls)
            else:
                problems += _ocsf_scalar(where, spec, v, cls["types"])
    return problems


def ocsf_problems(event: dict[str, Any], class_name: str = "network_activity") -> list[str]:
    cls = ocsf_class(class_name)
    attrs = dict(cls["attributes"])
    for profile in event.get("metadata", {}).get("profiles", []):
        attrs.update(cls["profiles"][profile]["attributes"])
    problems = _ocsf_object("", event, attrs, cls["required_attributes"], cls["constraints"], cls)
    if event.get("class_uid") != cls["class_uid"] or event.get("category_uid") != cls["category_uid"]:
        problems.append(f"class_uid / category_uid are not {cls['class_name']}'s")
    if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", 0):
        problems.append("type_uid is not class_uid * 100 + activity_id")
    return problems
