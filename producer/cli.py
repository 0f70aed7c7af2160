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

from producer.config import AgentConfig, Setting, listen_address, load_config, settings
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
        "consume", help="turn the header topic into SIEM / data-lake input (ECS, OCSF; NDJSON, Parquet)",
        description=textwrap.fill(
            "Read header records as a member of a consumer group (run more members to scale out), decode "
            "them through the schema registry (every schema version, both message shapes), map each record "
            "to an ECS or OCSF event (or leave it raw) and write the events to a sink. Offsets are "
            "committed per partition only after the sink acknowledged the events (every --commit-interval, "
            "on a rebalance and at exit), so a crash re-reads and never skips; event ids are stable across "
            "replays. A message that cannot be decoded or mapped goes to <topic>.dlq with Kafka Connect's "
            "error headers, is counted, and the consumer moves on. SIGTERM / SIGINT flush, commit and exit. "
            "Takes the agent's [kafka] and [registry] settings (TLS, SASL) from --config, the environment "
            "and these flags.", 90),
        epilog="sinks (--sink):\n"
        "  stdout          NDJSON on standard output (default)\n"
        "  file:DIR        NDJSON files DIR/hdrlog-<format>.ndjson, rotated at --file-max-bytes\n"
        "  parquet:DIR     Parquet files DIR/dt=YYYY-MM-DD/host=HOST/part-*.parquet\n"
        "  opensearch:URL  _bulk to OpenSearch (elasticsearch:URL: Elasticsearch), _id = event id, --index\n"
        "  hec:URL         Splunk HTTP Event Collector (--format cim; token: --sink-token-file or HDRLOG_SINK_TOKEN)\n"
        "  kafka:TOPIC     one JSON message per event, keyed by event id\n"
        "\nexamples:\n"
        "  hdrlog consume --group siem --format ecs --sink file:/var/log/hdrlog\n"
        "  hdrlog consume --group lake --format ocsf --sink parquet:/data/hdrlog --from-beginning\n"
        "  hdrlog consume --format text --from-beginning --idle-timeout 5    # a quick look\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML file; its [kafka] and [registry] tables are used")
    _add_setting_flags(p, ("kafka.topic", "kafka.bootstrap_servers", "registry.url"))
    p.add_argument("--group", default=None,
                   help="consumer group; members of one group share the partitions (default hdrlog-consume-FORMAT; "
                   "with --format text a new group per run, for a quick look)")
    p.add_argument("--format", choices=["ecs", "ocsf", "cim", "raw", "text"], default="ecs",
                   help="ecs: Elastic Common Schema 9.x (default); ocsf: OCSF 1.8 Network Activity; cim: Splunk "
                   "CIM Network Traffic (for hec); raw: the records as the schema has them; text: one readable "
                   "line per record (stdout only)")
    p.add_argument("--sink", default="stdout", metavar="SINK", help="where events go (below; default stdout)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset when the group has none committed (default: the latest)")
    p.add_argument("--max-records", type=int, metavar="N",
                   help="stop once N events are written (at a message boundary)")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop when no message arrived for S seconds")
    p.add_argument("--commit-interval", type=float, metavar="S", default=None,
                   help="flush the sink and commit this often (default 1; parquet: 60, each flush closes files)")
    p.add_argument("--file-max-bytes", type=int, default=128 << 20, metavar="N",
                   help="file sink: rotate the NDJSON file at this size (default 128 MiB)")
    p.add_argument("--file-keep", type=int, default=0, metavar="N",
                   help="file sink: keep at most N rotated files (default 0: all)")
    p.add_argument("--parquet-file-rows", type=int, default=1_000_000, metavar="N",
                   help="parquet sink: close a file at N rows, even before a commit (default 1000000)")
    p.add_argument("--parquet-row-group-rows", type=int, default=128 * 1024, metavar="N",
                   help="parquet sink: rows per row group (default 131072)")
    p.add_argument("--parquet-compression", choices=("zstd", "snappy", "lz4", "gzip", "none"), default="zstd",
                   help="parquet sink: the codec (default zstd; snappy files are about 1.7 times larger)")
    p.add_argument("--index", default="hdrlog-{format}-{date}",
                   help="opensearch/elasticsearch sink: the index; {format} and {date} (the event's UTC date, "
                   "YYYY.MM.DD) are filled in (default hdrlog-{format}-{date})")
    p.add_argument("--hec-index", default="", help="hec sink: the Splunk index (default: the token's)")
    p.add_argument("--sink-user", default="", help="HTTP sinks: basic auth user")
    p.add_argument("--sink-password-file", default="", metavar="FILE",
                   help="HTTP sinks: the basic auth password, from FILE (else env HDRLOG_SINK_PASSWORD)")
    p.add_argument("--sink-token-file", default="", metavar="FILE",
                   help="hec sink: the HEC token, from FILE (else env HDRLOG_SINK_TOKEN)")
    p.add_argument("--sink-ca", default="", metavar="FILE",
                   help="HTTP sinks: verify the server against this CA bundle (default: the system's)")
    p.add_argument("--sink-retry", type=float, default=300.0, metavar="S",
                   help="HTTP sinks: retry what the server asks to retry (429, 5xx) for S seconds, then stop "
                   "without committing (default 300)")
    p.add_argument("--listen", default="off", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (default off; 127.0.0.1:0 takes a free port; an address "
                   "other hosts reach needs telemetry.token_file, from --config or HDRLOG_TOKEN_FILE, whose bearer "
                   "token every request must carry; telemetry.tls_cert_file serves HTTPS)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="a status line on stderr: events/s, lag per partition (auto: when stderr is a terminal)")


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
    p.add_argument("--config", type=Path, default=None, help="the agent's config file, for its listen address, "
                   "bearer token (telemetry.token_file) and certificate (telemetry.tls_cert_file)")


def _stack_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stack", help="run the local Kafka + schema registry, and on request OpenSearch and Kafka Connect",
        description="A single-node Kafka (KRaft) and an Apicurio registry (kafkasql storage) as "
        "local processes bound to 127.0.0.1; state and logs under ~/.cache/hdrlog "
        "(HDRLOG_CACHE_DIR). Ports: HDRLOG_STACK_KAFKA_PORT, HDRLOG_STACK_REGISTRY_PORT.")
    p.add_argument("action", choices=["up", "down", "status", "restart"])
    p.add_argument("--opensearch", action="store_true",
                   help="also run an OpenSearch node on 127.0.0.1:9200 (HDRLOG_STACK_OPENSEARCH_PORT), the "
                   "consumer's _bulk target; it runs as nobody when the stack runs as root")
    p.add_argument("--connect", action="store_true",
                   help="also run a Kafka Connect worker (standalone, REST on 127.0.0.1:8083, "
                   "HDRLOG_STACK_CONNECT_PORT) with FileStream connectors and Apicurio's Avro converter")
    secure = p.add_mutually_exclusive_group()
    secure.add_argument("--secure", action="store_true", default=None,
                        help="also give Kafka a SASL_SSL listener on 127.0.0.1:9094 (HDRLOG_STACK_SECURE_PORT): "
                        "SCRAM-SHA-512, PLAIN and (unsecured, for tests) OAUTHBEARER over TLS, a client "
                        "certificate optional, ACLs enforced; an mTLS listener on 127.0.0.1:9095 "
                        "(HDRLOG_STACK_MTLS_PORT) that requires a client certificate; and the registry over "
                        "HTTPS with basic auth on "
                        "127.0.0.1:8444 (HDRLOG_STACK_SECURE_REGISTRY_PORT; nginx in front of it). A CA, "
                        "certificates and users are generated once under the stack directory's secure/. Kept "
                        "until --no-secure")
    secure.add_argument("--no-secure", dest="secure", action="store_false",
                        help="drop the SASL_SSL listener (Kafka restarts without it at its next start) and the "
                        "registry's HTTPS proxy")


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
        "from Kafka), counted loss by reason, unaccounted loss, the CPU of all its processes at start-up and "
        "from ready to exit, that CPU per second of traffic, and records per CPU-second of the whole run; "
        "every target is judged at every rate. Then the agent's data-path overhead, its capture-to-broker "
        "latency at 20k records/s, its peak RSS and BPF map memory, and an idle agent's CPU, thread by "
        "thread. Writes bench.json, bench.md and bench.png to --output. Needs root; takes about 15 minutes "
        "(--quick: about one).")
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
    p.add_argument("--idle-seconds", type=float, default=60.0, metavar="S",
                   help="how long the idle agent is measured (default 60; 0 skips it)")
    p.add_argument("--output", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                   help="where bench.json, bench.md and bench.png go (default benchmarks/results)")
    p.add_argument("--update", type=Path, default=None, metavar="FILE",
                   help="also replace FILE's bench section (BENCHMARKS.md) with this run, chart included")
    p.add_argument("--quick", action="store_true",
                   help="1 s runs at 50k packets/s, one overhead pair, 2 s latency runs, 3 s idle: checks that "
                   "the benchmark works, measures nothing worth keeping")
    p.add_argument("--consumer", action="store_true",
                   help="measure `hdrlog consume` instead: each sink and format, a Kafka Connect worker "
                   "(FileStreamSink) on the same topic, and two group members against one; writes "
                   "consumer.json and consumer.md (and FILE's consumer section with --update)")
    p.add_argument("--ingest", action="store_true",
                   help="measure the HTTP ingest instead: wrk posting single events and arrays of 100 with the "
                   "disk buffer while capture runs, then a fixed rate with the broker stopped mid-run; writes "
                   "ingest.json and ingest.md (and FILE's ingest section with --update); about 3 minutes")
    p.add_argument("--records", type=int, default=500_000, metavar="N",
                   help="--consumer: records the agent writes to each topic (default 500000: runs long enough "
                   "that a consumer's one-time costs weigh little)")


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

    from producer.privileges import no_new_privs

    # before any thread (numpy's and pyarrow's start when they are imported): all of them inherit it
    no_new_privs()

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
    _stop_on_signals(stop, running=lambda: bool(built) and built[0].attached.is_set())
    agent = build(cfg, status_line=status, reload_config=reload_config, on_stdout_closed=stop.set)
    built.append(agent)
    signal.signal(signal.SIGHUP, lambda _s, _f: agent.reload_requested.set())
    report = agent.run(stop)
    if status is not None:
        sys.stderr.write("\n")
    sys.stderr.write(json.dumps({"summary": report.as_dict()}) + "\n")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from producer.consumer.build import SinkOptions, formatter, sink
    from producer.consumer.runner import ConsumeOptions, Runner
    from producer.consumer.sinks.http import HttpOptions
    from producer.consumer.telemetry import ConsumerTelemetry, Progress, metrics_renderer, render_metrics
    from producer.telemetry.server import TelemetryServer, security_of

    cfg = load_config(args.config, os.environ, _overrides(args))
    for name in ("max_records", "file_max_bytes", "parquet_file_rows", "parquet_row_group_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.file_keep < 0:
        raise ConfigError("--file-keep must not be negative")
    interval = args.commit_interval
    if interval is None:
        interval = 60.0 if args.sink.startswith("parquet:") else 1.0
    if interval <= 0:
        raise ConfigError("--commit-interval must be positive")
    if args.sink_retry <= 0:
        raise ConfigError("--sink-retry must be positive")
    client_id = f"hdrlog-consume-{uuid.uuid4().hex[:8]}"
    out = sink(args.sink, args.format, SinkOptions(
        file_max_bytes=args.file_max_bytes, file_keep=args.file_keep, parquet_file_rows=args.parquet_file_rows,
        parquet_row_group_rows=args.parquet_row_group_rows, parquet_compression=args.parquet_compression,
        index=args.index, hec_index=args.hec_index,
        http=HttpOptions(user=args.sink_user, password_file=args.sink_password_file,
                         token_file=args.sink_token_file, ca_file=args.sink_ca, retry_s=args.sink_retry),
        kafka={"bootstrap.servers": cfg.kafka.bootstrap_servers, "client.id": client_id,
               **cfg.kafka.client_properties()}))
    opts = ConsumeOptions(
        bootstrap_servers=cfg.kafka.bootstrap_servers, schema_registry=cfg.registry.url,
        kafka=cfg.kafka.client_properties(), registry=cfg.registry.client_properties(), topic=cfg.kafka.topic,
        group=args.group or (f"hdrlog-console-{uuid.uuid4().hex[:8]}" if args.format == "text"
                             else f"hdrlog-consume-{args.format}"), from_beginning=args.from_beginning,
        max_records=args.max_records, idle_timeout_s=args.idle_timeout, commit_interval_s=interval,
        client_id=client_id)
    tel = ConsumerTelemetry()
    progress = Progress(tel)
    progress.enabled = args.progress == "on" or (args.progress == "auto" and progress.enabled)
    server = None
    if args.listen != "off":
        host, port = listen_address("--listen", args.listen, cfg.telemetry.token_file,
                                    "anyone who reaches it could read the consumer's metrics")
        registry = metrics_renderer(tel)
        server = TelemetryServer(host, port, status=tel.snapshot, metrics=lambda: render_metrics(registry),
                                 security=security_of(cfg.telemetry))
        server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    try:
        report = Runner(opts, formatter(args.format), out, telemetry=tel, progress=progress).run(stop)
    finally:
        if server is not None:
            server.stop()
    sys.stderr.write(json.dumps({"summary": report.counters}) + "\n")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    import os

    from producer.serialize.registry import Registry
    from producer.serialize.schemas import agent_subjects

    cfg = load_config(args.config, os.environ, _overrides(args))
    subjects = agent_subjects(cfg.kafka.topic, cfg.kafka.shape, cfg.telemetry.stats_topic, cfg.ingest.topic)
    refused = 0
    with Registry(cfg.registry.url, cfg.registry.client_properties()) as registry:
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

    telemetry = load_config(args.config, os.environ).telemetry
    url = args.url
    if url is None:
        if telemetry.listen == "off":
            raise ConfigError("telemetry.listen is off: give --url")
        url = f"{'https' if telemetry.tls_cert_file else 'http'}://{telemetry.listen}"
    token = telemetry.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx2.get(url.rstrip("/") + "/api/v1/status", timeout=5, headers=headers,
                       verify=telemetry.tls_cert_file or True)
        r.raise_for_status()
        doc = r.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise HdrlogError(f"no agent status at {url}: {exc}") from exc
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from producer.devstack import StackSettings, run_stack_command

    return run_stack_command(args.action, StackSettings.from_env(), with_opensearch=args.opensearch,
                             with_connect=args.connect, secure=args.secure)


def cmd_demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    shapes = ("batch", "record") if args.shape == "both" else (args.shape,)
    return run_demo(iface=args.iface, duration_s=args.duration, topic=args.topic,
                    keep_network=args.keep_network, json_lines=args.json, shapes=shapes)


def cmd_bench(args: argparse.Namespace) -> int:
    from producer.bench.run import run_bench

    if args.ingest:
        from producer.bench.ingest import run_ingest_bench

        if os.geteuid() != 0:
            raise HdrlogError("the benchmark needs root (network namespaces, BPF)")
        run_ingest_bench(out_dir=args.output, say=lambda line: print(line, flush=True), update=args.update)
        return 0

    if args.consumer:
        from producer.bench.consumer import run_consumer_bench

        if os.geteuid() != 0:
            raise HdrlogError("the benchmark needs root (network namespaces, BPF, cgroups)")
        if args.records < 1000:
            raise ConfigError("--records must be at least 1000")
        run_consumer_bench(records=args.records, out_dir=args.output, say=lambda line: print(line, flush=True),
                           update=args.update)
        return 0
    if args.quick:
        args.seconds, args.rates, args.overhead_rounds, args.latency_seconds = 1.0, [50_000], 1, 2.0
        args.idle_seconds = 3.0
    if os.geteuid() != 0:
        raise HdrlogError("the benchmark needs root (network namespaces, BPF, cgroups)")
    run_bench(seconds=args.seconds, rates=args.rates, names=args.contender, overhead_rounds=args.overhead_rounds,
              latency_s=args.latency_seconds, out_dir=args.output, say=lambda line: print(line, flush=True),
              update=args.update, idle_s=args.idle_seconds)
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
