"""hdrlog: eBPF packet-header records to Kafka as Avro."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hdrlog")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"
