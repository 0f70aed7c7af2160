"""The kernel record (bpf/record.h) and its Python mirror (decode/layout.py) agree."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from producer.decode import layout
from tests.conftest import ROOT

pytestmark = pytest.mark.kernel


def _btf_struct(btf_id: int, name: str) -> dict:
    dump = json.loads(subprocess.run(["bpftool", "-j", "btf", "dump", "id", str(btf_id)],
                                     capture_output=True, text=True, check=True).stdout)
    for t in dump["types"]:
        if t.get("kind") == "STRUCT" and t.get("name") == name:
            return t
    raise AssertionError(f"struct {name} not in BTF {btf_id}")


def test_record_layout_matches_compiled_program(root_required: None) -> None:
    from producer.capture.program import CaptureProgram, ProgramOptions

    prog = CaptureProgram(ProgramOptions(ringbuf_pages=16))
    try:
        info = json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(_prog_id(prog.ingress.fd))],
            capture_output=True, text=True, check=True).stdout)
        struct = _btf_struct(info["btf_id"], "hdrlog_record")
    finally:
        prog.close()
    assert struct["size"] == layout.RECORD_DTYPE.itemsize == layout.RECORD_SIZE
    compiled = {m["name"]: m["bits_offset"] // 8 for m in struct["members"] if m["name"] != "_pad"}
    mirrored = {name: layout.RECORD_DTYPE.fields[name][1] for name in layout.RECORD_DTYPE.names}
    assert compiled == mirrored


def _prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise AssertionError("no prog_id in fdinfo")


def test_constants_match_record_h() -> None:
    text = (ROOT / "bpf" / "record.h").read_text()
    defines = {m[1]: int(m[2], 0) if not m[3] else 1 << int(m[3])
               for m in re.finditer(r"#define HDRLOG_(\w+)\s+(?:(\d+|0x[0-9a-fA-F]+)|\(1 << (\d+)\))",
                                    text)}
    expected = {
        "ABI_VERSION": layout.ABI_VERSION, "DIR_INGRESS": layout.DIR_INGRESS,
        "DIR_EGRESS": layout.DIR_EGRESS, "C_MAX": layout.C_MAX, "CFG_MAX": layout.CFG_MAX,
        "CFG_SAMPLE_RATE": layout.CFG_SAMPLE_RATE, "CFG_WAKEUP_RECORDS": layout.CFG_WAKEUP_RECORDS,
        "CFG_FILTER": layout.CFG_FILTER, "CIDR_INCLUDE": layout.CIDR_INCLUDE,
        "CIDR_EXCLUDE": layout.CIDR_EXCLUDE,
    }
    for name in ("INCLUDE", "PROTOS", "PORTS", "DROP_L2"):
        expected[f"FILTER_{name}"] = getattr(layout, f"FILTER_{name}")
    for name in ("IP", "PORTS", "TCP", "ICMP", "IP_ID", "FRAG", "DF", "MF", "TRUNCATED", "ANOMALY"):
        expected[f"F_{name}"] = getattr(layout, f"F_{name}")
    for i, name in enumerate(("SEEN", "FILTERED", "SAMPLED_OUT", "EMITTED", "RB_FAIL",
                              "PARSE_ANOMALY")):
        expected[f"C_{name}"] = i
    assert {k: defines.get(k) for k in expected} == expected
    assert len(layout.KERNEL_COUNTERS) == layout.C_MAX
