"""The README's configuration table is the config: every key, env var and default."""

from __future__ import annotations

import json
import re

from producer.config import settings
from tests.conftest import ROOT


def _rows() -> dict[str, tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    return {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `([\w.]+)` \| (`HDRLOG_\w+`|—) \| ([^|]+) \|", readme, re.M)
            if "." in m[1] or m[1] in {s.key for s in settings()}}


def test_readme_lists_every_setting_with_its_env_var() -> None:
    rows = _rows()
    expected = {s.key: f"`{s.env}`" if s.env else "—" for s in settings()}
    assert {k: v[0] for k, v in rows.items() if k in expected or "." in k} == expected


def test_readme_defaults_match() -> None:
    rows = _rows()
    for s in settings():
        val = s.default()
        if isinstance(val, bool):
            shown = f"`{str(val).lower()}`"
        elif isinstance(val, (int, float, str)) and val != "" and s.name != "host_id":
            shown = f"`{val:g}`" if isinstance(val, float) else f"`{val}`"
        else:
            continue
        assert rows[s.key][1].strip() == shown, s.key


def test_readme_documents_every_record_field() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The record", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", table))
    for name in ("HeaderRecord", "HeaderBatch", "AgentStats"):
        schema = json.loads((ROOT / "schemas" / f"{name}.avsc").read_text())
        fields = list(schema["fields"])
        for f in schema["fields"]:
            t = f["type"]
            if isinstance(t, dict) and isinstance(t.get("items"), dict):
                fields += t["items"]["fields"]
        missing = {f["name"] for f in fields} - documented
        assert not missing, (name, missing)
        assert all(f.get("doc") for f in fields), name


def _documented(section: str) -> set[str]:
    """Field names in a README mapping table; `a.b` / `.c` in one cell expands to a.b and a.c."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split(section, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        cell = row.split("|")[1]
        base = ""
        for name in re.findall(r"`([@\w.]+)`", cell):
            if name.startswith(".") and base:
                name = base.rsplit(".", 1)[0] + name
            base = name
            names.add(name)
    return names


def test_readme_documents_every_ecs_ocsf_and_cim_field() -> None:
    from producer.consumer.cim import CimFormatter
    from producer.consumer.ecs import EcsFormatter
    from producer.consumer.mapping import Origin, sample_records
    from producer.consumer.ocsf import OcsfFormatter
    from tests.schema_checks import leaves

    for fmt, section in ((EcsFormatter(), "### ECS 9.x"), (OcsfFormatter(), "### OCSF 1.8"),
                         (CimFormatter(), "### Splunk CIM")):
        emitted: set[str] = set()
        for event in fmt.events(sample_records(), Origin("t", 0, 0)):
            emitted |= set(leaves(event))
        documented = _documented(section)
        missing = {f for f in emitted if f not in documented and not f.startswith("unmapped.")}
        assert not missing, (fmt.name, sorted(missing))
