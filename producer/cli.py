"""Command line: ``hdrlog agent | consume | stack | demo``.

Every HdrlogError ends the command with one line on stderr and a non-zero
exit (2 for configuration, 1 otherwise); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from producer.config import AgentConfig, Setting, load_config, settings
from producer.errors import ConfigError, HdrlogError
from producer.telemetry.logs import setup_logging


def _flag_help(s: Setting) -> str:
    text = s.help.replace("`", "")
    default = s.default()
    hidden = default in ((), "", None) or isinstance(default, bool) or s.name == "host_id"
    shown = "" if hidden else f"; default {default:g}" if isinstance(default, float) else f"; default {default}"
    env = f"; env {s.env}" if s.env else ""
    return f"{text}{shown}{env}"


def _add_setting_flags(p: argparse.ArgumentParser, keys: Sequence[str] | None = None) -> None:
    """One flag per setting that has one, generated from the config's metadata (producer/config.py)."""
    for s in settings():
        if not s.flag or (keys is not None and s.key not in keys):
            continue
        kw: dict[str, Any] = {"dest": s.key, "help": _flag_help(s), "default": None}
        if s.type == "tuple[str, ...]":
            kw.update(action="append", metavar=s.field.metadata.get("metavar"))
        elif s.type == "bool":
            kw.update(action="store_true")
        else:
            conv = {"int": int, "float": float, "float | None": float}.get(s.type, str)
            choices = s.field.metadata.get("choices")
            kw.update(type=conv, choices=choices,
                      metavar=None if choices else s.field.metadata.get("metavar") or s.name.upper())
        p.add_argument(s.flag, **kw)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {s.key: getattr(args, s.key) for s in settings() if s.flag and hasattr(args, s.key)}


def _agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent",
        help="capture packet headers and publish them to Kafka",
        description=textwrap.fill(
            "Capture packet header records with eBPF (tc clsact ingress and egress, or XDP) on the given "
            "interfaces and publish them to Kafka, Avro-encoded through a schema registry (Confluent wire "
            "format, key = host id), one HeaderBatch per message (--shape batch) or one HeaderRecord per "
            "message (--shape record). Between the encoder and Kafka a buffer (memory, or disk for outages "
            "and restarts) holds what is not acknowledged yet. Every setting can also come from a TOML file "
            "(--config, tables [capture] [batch] [buffer] [kafka] [registry] [telemetry]) or an HDRLOG_* "
            "environment variable; flags win. SIGHUP re-reads the file and environment and applies filters "
            "and sampling without reloading the program; SIGINT/SIGTERM detach, drain and flush.", 90),
        epilog="examples:\n"
        "  hdrlog agent --iface eth0 --stdout --duration 10      # a quick look, no Kafka\n"
        "  hdrlog agent --iface eth0 --iface 'veth*' --bootstrap-servers kafka:9092 \\\n"
        "      --schema-registry http://registry:8081/apis/ccompat/v7 --exclude-cidr 10.0.0.0/8\n"
        "  hdrlog agent --iface eth0 --buffer disk --state-dir /var/lib/hdrlog   # survive outages, restarts\n"
        "  hdrlog agent --config /etc/hdrlog/agent.toml --print-config\n"
        "\nThe local HTTP server (--listen, default 127.0.0.1:9464) serves /metrics and /api/v1/status;\n"
        "`hdrlog status` reads the latter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with agent settings (see the README's table)")
    _add_setting_flags(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration (secrets masked) and exit")


def _consume_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "consume", help="print header records from a topic as JSON lines",
        description="Read header records with a consumer group, decode them through the schema registry "
        "(both message shapes: a HeaderBatch is expanded into its records) and print one JSON object per "
        "record. Offsets are committed after each message's records are written. Takes the agent's "
        "[kafka] and [registry] settings from --config (TLS, SASL), the environment and these flags.")
    p.add_argument("--config", type=Path, help="TOML file; its [kafka] and [registry] tables are used")
    _add_setting_flags(p, ("kafka.topic", "kafka.bootstrap_servers", "registry.url"))
    p.add_argument("--group", default=None, help="consumer group (default: a new one per run)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset when the group has none committed")
    p.add_argument("--max-records", type=int, metavar="N", help="stop after N records")
    p.add_argument("--idle-timeout", type=float, metavar="S",
                   help="stop when no record arrived for S seconds")
    p.add_argument("--format", choices=["json", "text"], default="json",
                   help="json: one object per record (default); text: one readable line per record")


def _schemas_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schemas", help="check or register the agent's Avro schemas in the registry",
        description="The agent writes the header topic (HeaderBatch or HeaderRecord, by --shape) and the "
        "stats topic (AgentStats); subjects follow TopicNameStrategy (<topic>-value). `check` tests each "
        "local schema against the subject's latest version under the registry's compatibility rules and "
        "exits 1, with the registry's reason, if any is refused; `register` registers them (for "
        "registries where agents run with registry.auto_register = false).")
    p.add_argument("action", choices=["check", "register"])
    p.add_argument("--config", type=Path, help="TOML file with agent settings")
    _add_setting_flags(p, ("kafka.topic", "kafka.shape", "registry.url"))


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", help="what a running agent is doing (its /api/v1/status, for a person)",
        description="Ask a running agent's local HTTP server for /api/v1/status and print it: interfaces, "
        "counters and rates, the buffer, the delivery state (ok, retrying, outage) and the last error. "
        "Exits 1 if the agent does not answer.")
    p.add_argument("--url", default=None, help="the agent's server (default: http://<telemetry.listen>, "
                   "127.0.0.1:9464; env HDRLOG_LISTEN)")
    p.add_argument("--json", action="store_true", help="print the JSON as the agent serves it")


def _stack_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stack", help="run the local Kafka + schema registry (development and tests)",
        description="A single-node Kafka (KRaft) and an Apicurio registry (kafkasql storage) as "
        "local processes bound to 127.0.0.1; state and logs under ~/.cache/hdrlog "
        "(HDRLOG_CACHE_DIR). Ports: HDRLOG_STACK_KAFKA_PORT, HDRLOG_STACK_REGISTRY_PORT.")
    p.add_argument("action", choices=["up", "down", "status", "restart"])


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="the whole path on a demo network: stack, traffic, agent, consumer",
        description="Start the local stack, create a network namespace joined by a veth pair, "
        "send real traffic (HTTP, ping, DNS) across it while the agent captures, then show "
        "the records as the consumer decodes them and the agent's counters; once with batch "
        "messages (HeaderBatch) and once with one message per record (HeaderRecord).")
    p.add_argument("--iface", help="capture this existing interface instead of the demo veth")
    p.add_argument("--duration", type=float, default=8.0, metavar="S", help="capture time (default 8)")
    p.add_argument("--topic", default="hdrlog.demo", help="topic prefix: <topic>.batch and <topic>.record")
    p.add_argument("--shape", choices=["batch", "record", "both"], default="both",
                   help="message shape(s) to show, one agent run each (default both)")
    p.add_argument("--keep-network", action="store_true", help="leave the demo namespace in place")
    p.add_argument("--json", action="store_true",
                   help="print the consumer's JSON objects instead of one readable line per record")


def _rates(text: str) -> list[int]:
    try:
        return [0 if x.strip() == "max" else int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of packets/s (e.g. 50000,100000,max)") from None


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="measure the agent against tshark+kcat, pmacctd and a per-record Python pipeline",
        description="One run, one machine, one broker: a C sender floods UDP across a veth pair between "
        "two namespaces at each offered rate; every contender captures it into a fresh topic of the local "
        "stack (`hdrlog stack up` first). Prints, per contender and rate: offered, delivered (read back "
        "from Kafka), counted loss by reason, unaccounted loss, the CPU of all its processes from ready to "
        "exit and records per CPU-second; then the agent's data-path overhead, its capture-to-broker "
        "latency at 20k records/s, its peak RSS and BPF map memory. Writes bench.json, bench.md and "
        "bench.png to --output. Needs root; takes about 10 minutes (--quick: about one).")
    p.add_argument("--seconds", type=float, default=5.0, metavar="S", help="traffic per run (default 5)")
    p.add_argument("--rates", type=_rates, default=[50_000, 100_000, 200_000, 0], metavar="LIST",
                   help="offered packets/s, comma-separated, `max` for flat out (default 50000,100000,200000,max)")
    p.add_argument("--contender", action="append", default=None, metavar="NAME",
                   help="run only this contender (repeatable): `hdrlog batch`, `hdrlog record`, `pmacctd`, "
                   "`tshark+kcat`, `per-record python`")
    p.add_argument("--overhead-rounds", type=int, default=2, metavar="N",
                   help="without/with-agent pairs for the data-path overhead (default 2; 0 skips it)")
    p.add_argument("--latency-seconds", type=float, default=10.0, metavar="S",
                   help="traffic of each latency run (default 10; 0 skips it)")
    p.add_argument("--output", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                   help="where bench.json, bench.md and bench.png go (default benchmarks/results)")
    p.add_argument("--update", type=Path, default=None, metavar="FILE",
                   help="also replace FILE's bench section (BENCHMARKS.md) with this run, chart included")
    p.add_argument("--quick", action="store_true",
                   help="1 s runs at 50k packets/s, one overhead pair, 2 s latency runs: checks that the "
                   "benchmark works, measures nothing worth keeping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdrlog",
        description="hdrlog: packet header records from the kernel (eBPF) to Kafka as Avro.",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="auto",
                        help="log format on stderr (auto: text on a terminal, JSON otherwise)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _agent_parser(sub)
    _consume_parser(sub)
    _schemas_parser(sub)
    _status_parser(sub)
    _stack_parser(sub)
    _demo_parser(sub)
    _bench_parser(sub)
    return parser


def _stop_on_signals(stop: threading.Event, running: Callable[[], bool]) -> None:
    """SIGINT/SIGTERM set ``stop`` once ``running()``; before that (start-up: retrying the
    broker, compiling, attaching) they interrupt at once, and the start-up's clean-up
    (ExitStack, ``finally``) undoes what was done."""

    def handler(_sig: int, _frame: FrameType | None) -> None:
        if not running():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_agent(args: argparse.Namespace) -> int:
    import os

    from producer.agent import Agent
    from producer.pipeline import build

    overrides = _overrides(args)
    cfg = load_config(args.config, os.environ, overrides)
    if args.print_config:
        print(json.dumps(cfg.masked(), indent=2))
        return 0

    def reload_config() -> AgentConfig:
        return load_config(args.config, os.environ, overrides)

    status = None
    if sys.stderr.isatty() and not cfg.stdout:
        def status(line: str) -> None:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
    stop = threading.Event()
    built: list[Agent] = []
    _stop_on_signals(stop, running=lambda: bool(built) and built[0].ready.is_set())
    agent = build(cfg, status_line=status, reload_config=reload_config, on_stdout_closed=stop.set)
    built.append(agent)
    signal.signal(signal.SIGHUP, lambda _s, _f: agent.reload_requested.set())
    report = agent.run(stop)
    if status is not None:
        sys.stderr.write("\n")
    sys.stderr.write(json.dumps({"summary": report.as_dict()}) + "\n")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    import os

    from producer.consumer.console import ConsumeOptions, consume

    cfg = load_config(args.config, os.environ, _overrides(args))
    opts = ConsumeOptions(
        bootstrap_servers=cfg.kafka.bootstrap_servers, schema_registry=cfg.registry.url,
        kafka=cfg.kafka.properties, registry=cfg.registry.properties,
        topic=cfg.kafka.topic, group=args.group or f"hdrlog-console-{uuid.uuid4().hex[:8]}",
        from_beginning=args.from_beginning, max_records=args.max_records,
        idle_timeout_s=args.idle_timeout, text=args.format == "text")
    _stop_on_signals_for_consumer()
    report = consume(opts, sys.stdout)
    sys.stderr.write(json.dumps({"records": report.records}) + "\n")
    return 0


def _stop_on_signals_for_consumer() -> None:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_schemas(args: argparse.Namespace) -> int:
    import os

    from producer.serialize.registry import Registry
    from producer.serialize.schemas import agent_subjects

    cfg = load_config(args.config, os.environ, _overrides(args))
    subjects = agent_subjects(cfg.kafka.topic, cfg.kafka.shape, cfg.telemetry.stats_topic)
    refused = 0
    with Registry(cfg.registry.url, cfg.registry.properties) as registry:
        for s in subjects:
            if args.action == "register":
                print(f"{s.name}: {s.schema.name} registered, id {registry.register(s.name, s.schema.text)}")
                continue
            result = registry.check(s)
            if not result.exists:
                print(f"{s.name}: {s.schema.name} not registered yet; it would be version 1")
            elif result.registered:
                print(f"{s.name}: {s.schema.name} already registered")
            elif result.compatible:
                print(f"{s.name}: {s.schema.name} is compatible; it would be a new version")
            else:
                refused += 1
                print(f"{s.name}: {s.schema.name} refused: {result.reason}")
    if refused:
        raise HdrlogError(f"{refused} schema(s) refused by the registry's compatibility rules")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import os

    import httpx2

    from producer.telemetry.status import render

    url = args.url
    if url is None:
        listen = load_config(None, os.environ).telemetry.listen
        if listen == "off":
            raise ConfigError("telemetry.listen is off: give --url")
        url = f"http://{listen}"
    try:
        r = httpx2.get(url.rstrip("/") + "/api/v1/status", timeout=5)
        r.raise_for_status()
        doc = r.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise HdrlogError(f"no agent status at {url}: {exc}") from exc
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from producer.devstack import StackSettings, run_stack_command

    return run_stack_command(args.action, StackSettings.from_env())


def cmd_demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    shapes = ("batch", "record") if args.shape == "both" else (args.shape,)
    return run_demo(iface=args.iface, duration_s=args.duration, topic=args.topic,
                    keep_network=args.keep_network, json_lines=args.json, shapes=shapes)


def cmd_bench(args: argparse.Namespace) -> int:
    from producer.bench.run import run_bench

    if args.quick:
        args.seconds, args.rates, args.overhead_rounds, args.latency_seconds = 1.0, [50_000], 1, 2.0
    if os.geteuid() != 0:
        raise HdrlogError("the benchmark needs root (network namespaces, BPF, cgroups)")
    run_bench(seconds=args.seconds, rates=args.rates, names=args.contender, overhead_rounds=args.overhead_rounds,
              latency_s=args.latency_seconds, out_dir=args.output, say=lambda line: print(line, flush=True),
              update=args.update)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    commands = {"agent": cmd_agent, "consume": cmd_consume, "schemas": cmd_schemas, "status": cmd_status,
                "stack": cmd_stack, "demo": cmd_demo, "bench": cmd_bench}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"hdrlog: error: {exc}", file=sys.stderr)
        return 2
    except HdrlogError as exc:
        print(f"hdrlog: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hdrlog: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
