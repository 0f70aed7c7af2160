"""Command line: ``hdrlog agent | consume | stack | demo``.

Every HdrlogError ends the command with one line on stderr and a non-zero
exit (2 for configuration, 1 otherwise); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from producer.config import AgentConfig, load_config
from producer.errors import ConfigError, HdrlogError
from producer.telemetry.logs import setup_logging

_D = AgentConfig()


def _agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent",
        help="capture packet headers and publish them to Kafka",
        description=textwrap.fill(
        "Capture packet header records with eBPF (tc clsact ingress and egress) on "
        "the given interfaces and publish them to Kafka, Avro-encoded through a schema "
        "registry (Confluent wire format, key = host id). Every option can also come "
        "from a TOML file (--config) or an HDRLOG_* environment variable; flags win. "
        "SIGHUP re-reads the file and environment and applies filters and sampling "
        "without reloading the program; SIGINT/SIGTERM detach, drain and flush.", 90),
        epilog="examples:\n"
        "  hdrlog agent --iface eth0 --stdout --duration 10      # a quick look, no Kafka\n"
        "  hdrlog agent --iface eth0 --iface 'veth*' --bootstrap-servers kafka:9092 \\\n"
        "      --schema-registry http://registry:8081/apis/ccompat/v7 --exclude-cidr 10.0.0.0/8\n"
        "  hdrlog agent --config /etc/hdrlog/agent.toml --print-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with agent settings (keys as below, "
                   "plus [kafka] and [registry] tables passed to the clients)")
    p.add_argument("--iface", action="append", dest="interfaces", metavar="IFACE",
                   help="interface to capture, or a glob pattern that also catches links appearing "
                   "later; repeat for several (env HDRLOG_IFACE, comma-separated)")
    p.add_argument("--bootstrap-servers", help=f"Kafka bootstrap servers (default {_D.bootstrap_servers})")
    p.add_argument("--schema-registry", help=f"registry URL (default {_D.schema_registry})")
    p.add_argument("--topic", help=f"topic (default {_D.topic}); schema subject <topic>-value")
    p.add_argument("--host-id", help="this host's id, the message key (default: the hostname)")
    p.add_argument("--partitions", type=int, help=f"partitions if the agent creates the topic "
                   f"(default {_D.partitions})")
    p.add_argument("--duration", type=float, dest="duration_s", metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    p.add_argument("--stdout", action="store_true", default=None,
                   help="print records as JSON lines instead of publishing (no Kafka needed)")
    p.add_argument("--sample-rate", type=int, metavar="N", help="record 1 packet in N (default 1)")
    p.add_argument("--ringbuf-pages", type=int, metavar="N",
                   help=f"ring buffer size in pages, a power of two (default {_D.ringbuf_pages})")
    p.add_argument("--connect-timeout", type=float, dest="connect_timeout_s", metavar="S",
                   help=f"retry broker/registry at start for S seconds (default {_D.connect_timeout_s:g})")
    p.add_argument("--hook", choices=["tc", "xdp"],
                   help="tc: clsact ingress and egress (default); xdp: ingress only, for high rates")
    p.add_argument("--xdp-mode", choices=["auto", "native", "generic"],
                   help="with --hook xdp: driver (native) or generic mode; auto tries native first")
    p.add_argument("--include-cidr", action="append", dest="include_cidrs", metavar="CIDR",
                   help="record only IP packets to or from CIDR (repeatable; the longest matching "
                   "prefix of include/exclude rules decides)")
    p.add_argument("--exclude-cidr", action="append", dest="exclude_cidrs", metavar="CIDR",
                   help="never record IP packets to or from CIDR (repeatable)")
    p.add_argument("--protocol", action="append", dest="protocols", metavar="PROTO",
                   help="record only this IP protocol: tcp, udp, icmp, icmpv6, sctp or a number")
    p.add_argument("--port", action="append", dest="ports", metavar="N[-M]",
                   help="record only packets whose source or destination port is listed")
    p.add_argument("--drop-non-ip", action="store_true", default=None,
                   help="do not record frames that are not IPv4/IPv6 (ARP, LLDP, ...)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration (secrets masked) and exit")


def _consume_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "consume", help="print header records from a topic as JSON lines",
        description="Read header records with a consumer group, decode them through the "
        "schema registry and print one JSON object per record. Offsets are committed "
        "after each record is written.")
    p.add_argument("--topic", default=_D.topic)
    p.add_argument("--bootstrap-servers", default=_D.bootstrap_servers)
    p.add_argument("--schema-registry", default=_D.schema_registry)
    p.add_argument("--group", default=None, help="consumer group (default: a new one per run)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset when the group has none committed")
    p.add_argument("--max-records", type=int, metavar="N", help="stop after N records")
    p.add_argument("--idle-timeout", type=float, metavar="S",
                   help="stop when no record arrived for S seconds")
    p.add_argument("--format", choices=["json", "text"], default="json",
                   help="json: one object per record (default); text: one readable line per record")


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
        "the records as the consumer decodes them and the agent's counters.")
    p.add_argument("--iface", help="capture this existing interface instead of the demo veth")
    p.add_argument("--duration", type=float, default=8.0, metavar="S", help="capture time (default 8)")
    p.add_argument("--topic", default="hdrlog.demo")
    p.add_argument("--keep-network", action="store_true", help="leave the demo namespace in place")
    p.add_argument("--json", action="store_true",
                   help="print the consumer's JSON objects instead of one readable line per record")


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
    _stack_parser(sub)
    _demo_parser(sub)
    return parser


def _stop_on_signals(running: threading.Event | None = None) -> threading.Event:
    """SIGINT/SIGTERM set the returned event once ``running`` is set; before that (start-up:
    retrying the broker, compiling, attaching) they interrupt at once, and the start-up's
    ``finally`` blocks undo what was done."""
    stop = threading.Event()

    def handler(_sig: int, _frame: FrameType | None) -> None:
        if running is not None and not running.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def cmd_agent(args: argparse.Namespace) -> int:
    import os

    from producer.pipeline import Agent

    overrides = {k: getattr(args, k) for k in (
        "interfaces", "bootstrap_servers", "schema_registry", "topic", "host_id", "partitions",
        "duration_s", "stdout", "sample_rate", "ringbuf_pages", "connect_timeout_s",
        "include_cidrs", "exclude_cidrs", "protocols", "ports", "drop_non_ip", "hook", "xdp_mode")}
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
    agent = Agent(cfg, status=status, reload_config=reload_config)
    stop = _stop_on_signals(running=agent.ready)
    signal.signal(signal.SIGHUP, lambda _s, _f: agent.reload_requested.set())
    report = agent.run(stop)
    if status is not None:
        sys.stderr.write("\n")
    sys.stderr.write(json.dumps({"summary": report.as_dict()}) + "\n")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from producer.consumer.console import ConsumeOptions, consume

    opts = ConsumeOptions(
        bootstrap_servers=args.bootstrap_servers, schema_registry=args.schema_registry,
        topic=args.topic, group=args.group or f"hdrlog-console-{uuid.uuid4().hex[:8]}",
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


def cmd_stack(args: argparse.Namespace) -> int:
    from producer.devstack import StackSettings, run_stack_command

    return run_stack_command(args.action, StackSettings.from_env())


def cmd_demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    return run_demo(iface=args.iface, duration_s=args.duration, topic=args.topic,
                    keep_network=args.keep_network, json_lines=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    commands = {"agent": cmd_agent, "consume": cmd_consume, "stack": cmd_stack, "demo": cmd_demo}
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
