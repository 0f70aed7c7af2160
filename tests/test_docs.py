"""The README's configuration table is the config: every key, env var and default."""

from __future__ import annotations

import re
from dataclasses import fields

from producer.config import AgentConfig
from tests.conftest import ROOT


def test_readme_lists_every_setting_with_its_env_var() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| (`HDRLOG_\w+`|—) \|", readme, re.M)}
    expected = {f.name: (f"`{f.metadata['env']}`" if f.metadata.get("env") else "—")
                for f in fields(AgentConfig)}
    assert rows == expected


def test_readme_defaults_match() -> None:
    readme = (ROOT / "README.md").read_text()
    cfg = AgentConfig()
    for f in fields(AgentConfig):
        val = getattr(cfg, f.name)
        if isinstance(val, (int, float, str)) and not isinstance(val, bool) and f.name != "host_id":
            shown = f"{val:g}" if isinstance(val, float) else str(val)
            assert re.search(rf"^\| `{f.name}` \| [^|]+ \| `{re.escape(shown)}` \|", readme, re.M), f.name


def test_readme_documents_every_record_field() -> None:
    import json

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The record", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", table))
    schema = json.loads((ROOT / "schemas" / "HeaderRecord.avsc").read_text())
    missing = {f["name"] for f in schema["fields"]} - documented
    assert not missing
    assert all(f.get("doc") for f in schema["fields"])
