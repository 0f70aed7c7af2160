"""hdrlog: eBPF packet-header records to Kafka as Avro."""
