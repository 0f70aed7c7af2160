"""`hdrlog bench --quick`: every contender runs on the same traffic and the table is well-formed.

It measures nothing worth keeping (1 s runs; the figures are in BENCHMARKS.md, from
`make bench`); it checks that the benchmark works end to end on this machine, and
that the agent's rows reconcile exactly: offered = delivered + counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_hdrlog

pytestmark = [pytest.mark.kernel, pytest.mark.stack]

CONTENDERS = {"hdrlog batch", "hdrlog record", "pmacctd", "tshark+kcat", "per-record python"}


def test_quick_bench_table_is_well_formed(stack, tmp_path: Path) -> None:
    res = run_hdrlog("bench", "--quick", "--output", str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["skipped"] == {}, report["skipped"]
    rows = {(r["contender"], r["rate"]): r for r in report["rows"]}
    assert set(rows) == {(c, 50_000) for c in CONTENDERS}
    for (name, _rate), r in rows.items():
        assert r["offered"] > 40_000, r  # the sender kept its rate
        assert 0 <= r["delivered"] <= r["offered"] + 10, r  # tshark/pmacct may see a stray frame; never more
        assert r["cpu_s"] > 0 and r["startup_cpu_s"] > 0, r
        assert r["per_cpu_s"] == round(r["delivered"] / (r["cpu_s"] + r["startup_cpu_s"])), r  # start-up in
        assert r["running_per_cpu_s"] == round(r["delivered"] / r["cpu_s"]), r
        assert r["unaccounted"] == r["offered"] - r["delivered"] - sum(r["counted"].values()), r
        if name.startswith("hdrlog"):
            # on a quiet pair at 50k packets/s the agent keeps everything, and everything is accounted for
            assert r["unaccounted"] == 0 and r["delivered"] == r["offered"], r
            assert r["peak_rss_bytes"] > 0 and r["extra"]["bpf_map_bytes"] > 16 << 20, r
            assert r["extra"]["acknowledged"] == r["delivered"], r
    o = report["overhead"]
    assert o["without_pps"] > 0 and o["with_pps"] > 0 and o["ratio"] == round(o["with_pps"] / o["without_pps"], 4)
    for shape in ("batch", "record"):
        q = report["latency_ms"][shape]
        assert q["records"] > 30_000 and 0 <= q["p50"] <= q["p99"] <= q["max"], q
    idle = report["idle"]
    assert idle["seconds"] == 3.0 and idle["cpu_s"] > 0 and abs(idle["cpu_fraction"] - idle["cpu_s"] / 3.0) < 1e-4
    names = {n for n, _cpu in idle["threads"]}
    assert {"hdrlog-capture", "hdrlog-publish"} <= names and any(n.startswith("rdk:") for n in names), names
    table = (tmp_path / "bench.md").read_text()
    assert "- at 50k: hdrlog batch / pmacctd **" in table and "- idle agent " in table
    assert table.count("\n| ") == 1 + len(CONTENDERS)  # the header and one row per contender
    assert "records / CPU-s" in table and "unaccounted loss, hdrlog, every rate: 0 (met)" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_update_section_replaces_only_the_bench_section(tmp_path: Path) -> None:
    from producer.bench.run import MARK_BEGIN, MARK_END, update_section

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"intro\n{MARK_BEGIN}\nold table\n{MARK_END}\nafter\n")
    (tmp_path / "results").mkdir()
    update_section(doc, "new table\n", tmp_path / "results" / "bench.png")
    assert doc.read_text() == (f"intro\n{MARK_BEGIN}\n![records per CPU-second and loss against offered rate]"
                               f"(results/bench.png)\n\nnew table\n{MARK_END}\nafter\n")


def test_consumer_bench_table_marks_each_target(tmp_path: Path) -> None:
    """Targets are judged on the whole process's CPU (start-up included), busy CPU only beside it."""
    from producer.bench.consumer import MARK_BEGIN, MARK_END, ConsumerReport, ConsumerRow, markdown
    from producer.bench.run import replace_between

    r = ConsumerReport("2026-11-30 04:00 UTC", "2 vCPUs", {"record": 1000, "batch": 1000})
    # (name, shape, records, busy CPU s, process CPU s, wall s)
    r.rows = [ConsumerRow("ecs file", "batch", 1000, 0.01, 0.01, 1.0),             # 100k: met
              ConsumerRow("ecs parquet", "batch", 1000, 0.004, 0.01, 1.0),        # busy 250k, process 100k
              ConsumerRow("ecs file", "record", 1000, 0.01, 0.1, 1.0),            # busy 100k, process 10k
              ConsumerRow("Kafka Connect FileStreamSink", "record", 1000, 0.05, 0.05, 1.0)]  # 20k
    r.scaling = {"one_member_per_cpu_s": 100, "two_members_per_cpu_s": [95, 89], "worst_ratio": 0.89}
    md = markdown(r)
    assert "| ecs file | batch | 1,000 | 0.01 | 100,000 | 0.01 | 100,000 | ≥ 50,000: met; 5.00× Connect |" in md
    assert "| ecs parquet | batch | 1,000 | 0.01 | 100,000 | 0.00 | 250,000 | ≥ 200,000: NOT met; 5.00× Connect |" \
        in md
    assert ("| ecs file | record | 1,000 | 0.10 | 10,000 | 0.01 | 100,000 | ≥ 50,000: NOT met; 0.50× Connect: "
            "NOT met |") in md
    assert "the worse keeps 89% (target ≥ 90%: NOT met)" in md
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"a\n{MARK_BEGIN}\nold\n{MARK_END}\nb\n")
    replace_between(doc, "\n" + md, MARK_BEGIN, MARK_END)
    assert doc.read_text() == f"a\n{MARK_BEGIN}\n{md}{MARK_END}\nb\n"


def test_ingest_bench_verdicts_follow_its_targets() -> None:
    """Each flat-out row is judged against TARGETS and P99_TARGET_MS, whatever they are set to."""
    from producer.bench.ingest import P99_TARGET_MS, TARGETS, IngestRow, markdown

    def row(name: str, events: int, p99: float) -> IngestRow:
        per = 1 if name != "array" else 100
        return IngestRow(name, per, 8, 10.0, events // per, events, {"202": events // per}, 1.0, p99, 1.0, 0.1)

    single, array = TARGETS["single"] * 10, TARGETS["array"] * 10  # events in 10 s at exactly the target
    assert row("single", single, P99_TARGET_MS - 0.1).verdict() == "met"
    assert row("array", array, P99_TARGET_MS - 0.1).verdict() == "met"
    assert row("single", single - 10, P99_TARGET_MS - 0.1).verdict().startswith("NOT met: ")
    assert row("array", array - 10, 1.0).verdict() == \
        f"NOT met: {TARGETS['array'] - 1:,} < {TARGETS['array']:,} events/s"
    assert row("single", single, P99_TARGET_MS).verdict() == \
        f"NOT met: p99 {P99_TARGET_MS:.1f} >= {P99_TARGET_MS:g} ms"
    assert row("outage", 1000, 500.0).verdict() == "-"
    md = markdown([row("single", single, 1.0), row("array", array - 10, 1.0)])
    assert md.splitlines()[2].endswith("| met |") and "| NOT met: " in md.splitlines()[3]


def test_bench_targets_are_judged_at_every_rate_on_the_whole_run() -> None:
    """A contender that meets a target flat out but not at 50k is NOT met at 50k; start-up CPU counts."""
    from producer.bench.run import Report, Row, markdown

    r = Report("2026-12-07 00:00 UTC", "2 vCPUs", 5.0)
    # (contender, rate, seconds, offered, delivered, counted, CPU ready to exit) + start-up CPU
    r.rows = [Row("hdrlog batch", 50_000, 5.0, 250_000, 250_000, {}, 0.05, startup_cpu_s=0.20),  # 1M: 10x of 100k
              Row("pmacctd", 50_000, 5.0, 250_000, 250_000, {}, 2.45, startup_cpu_s=0.05),       # 100k
              Row("hdrlog batch", 0, 5.0, 5_000_000, 5_000_000, {}, 2.0, startup_cpu_s=3.0),      # 1M
              Row("pmacctd", 0, 5.0, 2_000_000, 1_000_000, {}, 10.0, startup_cpu_s=0.0)]          # 100k
    md = markdown(r)
    assert "- at 50k: hdrlog batch / pmacctd **10.0x** (target 10x: met; from ready 49.0x)" in md
    assert "- at max: hdrlog batch / pmacctd **10.0x** (target 10x: met; from ready 25.0x)" in md
    r.rows[0].startup_cpu_s = 0.21  # a little more start-up: below 10x at 50k, not at max
    md = markdown(r)
    assert "- at 50k: hdrlog batch / pmacctd **9.6x** (target 10x: NOT met" in md
    assert "- at max: hdrlog batch / pmacctd **10.0x** (target 10x: met" in md
    assert "hdrlog batch 961,538 records per CPU-second (target 1,000,000: NOT met)" in md
