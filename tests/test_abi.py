"""The kernel ABI (bpf/record.h) and its one Python mirror (producer/abi.py) agree:
every HDRLOG_* constant, and the size, offset and width of every record field as the
compiled program's BTF has them."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from producer import abi
from tests.conftest import ROOT


def _defines(text: str) -> dict[str, int]:
    """Every ``#define HDRLOG_X value`` of a header, evaluated (integers and shifts only)."""
    out: dict[str, int] = {}
    for name, expr in re.findall(r"^#define HDRLOG_(\w+)[ \t]+(.+?)\s*(?:/\*.*)?$", text, re.M):
        assert re.fullmatch(r"[\s()<0-9xa-fA-F]+", expr), f"HDRLOG_{name}: cannot evaluate {expr!r}"
        out[name] = int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits, parentheses and << only
    return out


def test_every_record_h_constant_is_mirrored() -> None:
    text = (ROOT / "bpf" / "record.h").read_text()
    defines = _defines(text)
    assert len(defines) == text.count("#define HDRLOG_") - 1  # every one parsed (all but the guard)
    mirrored = {name: getattr(abi, name, None) for name in defines}
    assert mirrored == defines
    assert len(abi.KERNEL_COUNTERS) == abi.C_MAX


def _btf(btf_id: int) -> dict[int, dict[str, Any]]:
    dump = json.loads(subprocess.run(["bpftool", "-j", "btf", "dump", "id", str(btf_id)],
                                     capture_output=True, text=True, check=True).stdout)
    return {int(t["id"]): t for t in dump["types"]}


def _size(types: dict[int, dict[str, Any]], type_id: int) -> int:
    t = types[type_id]
    if t["kind"] in ("TYPEDEF", "VOLATILE", "CONST"):
        return _size(types, t["type_id"])
    if t["kind"] == "ARRAY":
        return int(t["nr_elems"]) * _size(types, t["type_id"])
    return int(t["size"])


@pytest.mark.kernel
def test_record_layout_matches_compiled_program(root_required: None) -> None:
    from producer.capture.program import CaptureProgram, ProgramOptions

    prog = CaptureProgram(ProgramOptions(ringbuf_pages=16))
    try:
        info = json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(_prog_id(prog.ingress.fd))],
            capture_output=True, text=True, check=True).stdout)
        types = _btf(info["btf_id"])
    finally:
        prog.close()
    struct = next(t for t in types.values() if t.get("kind") == "STRUCT" and t.get("name") == "hdrlog_record")
    assert struct["size"] == abi.RECORD_SIZE == abi.RECORD_DTYPE.itemsize
    compiled = {m["name"]: (m["bits_offset"] // 8, _size(types, m["type_id"]))
                for m in struct["members"] if not m["name"].startswith("_pad")}
    mirrored = {name: (abi.RECORD_DTYPE.fields[name][1], abi.RECORD_DTYPE.fields[name][0].itemsize)
                for name in abi.RECORD_DTYPE.names}
    assert compiled == mirrored


def _prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise AssertionError("no prog_id in fdinfo")
