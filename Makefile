# hdrlog -- the two commands a new machine needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
IFACE ?=

.PHONY: setup run test test-long bench bench-consumer bench-ingest lint lock stack-up stack-down clean

setup:
	bash scripts/setup.sh

## run: set up, start the local stack, capture demo traffic (or IFACE=...), show the records
run: setup
	$(VENV)/bin/hdrlog demo $(if $(IFACE),--iface $(IFACE))

## test: set up, start the local stack, run every test (kernel, stack, unit) and the linters
test: setup
	$(PY) -m ruff check producer tests benchmarks
	$(PY) -m mypy producer
	$(PY) -m pytest -ra -m "not long"

## test-long: the long fault and soak runs (minutes each)
test-long: setup
	$(PY) -m pytest -ra -m long

## bench: the agent against tshark+kcat, pmacctd and a per-record pipeline, same traffic and broker
## (about 15 minutes); writes benchmarks/results/ and the bench section of BENCHMARKS.md
bench: setup
	$(VENV)/bin/hdrlog stack up
	$(VENV)/bin/hdrlog bench --update BENCHMARKS.md

## bench-consumer: hdrlog consume into each sink, beside a Kafka Connect worker, one vs two members
## (about 15 minutes); writes benchmarks/results/consumer.* and the consumer section of BENCHMARKS.md
bench-consumer: setup
	$(VENV)/bin/hdrlog stack up --opensearch --connect
	$(VENV)/bin/hdrlog bench --consumer --update BENCHMARKS.md

## bench-ingest: the HTTP ingest (wrk, single events and arrays of 100, disk buffer, capture running; then a
## fixed rate with the broker stopped); about 3 minutes; writes benchmarks/results/ingest.* and BENCHMARKS.md
bench-ingest: setup
	$(VENV)/bin/hdrlog stack up
	$(VENV)/bin/hdrlog bench --ingest --update BENCHMARKS.md

stack-up: setup
	$(VENV)/bin/hdrlog stack up

## lock: re-resolve requirements.lock after a dependency change in pyproject.toml (versions already
## in it are kept unless the change needs others; `--upgrade` in UV_FLAGS moves them all)
lock: setup
	$(VENV)/bin/uv pip compile pyproject.toml scripts/lock-build.in --extra dev --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_36 -o requirements.lock $(UV_FLAGS)

stack-down:
	$(VENV)/bin/hdrlog stack down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
