# Two commands: `make run` and `make test`. Both create .venv and install on first use.
# `make bench` and `make locust` (bench/README.md) add the bench extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LOCUST_HOST ?= http://127.0.0.1:8080
FUZZ_EXAMPLES ?= 500
# pytest-xdist processes, each with its own embedded servers; 0 runs the suite in this process.
# The tests wait on servers more than they compute: on 2 cores the main suite took 669 s with 3
# processes and 774 s with 2 (2026-12-02).
TEST_WORKERS ?= 3
CLUSTER_WORKERS ?= 2  # each starts a 3-node cluster: 3 processes took 100 s against 92 s for 2
# run a second time on a 3-primary Valkey Cluster (OMS_TEST_CLUSTER=1) with the stock over
# 3 partitions (OMS_TEST_PARTITIONS=3): one suite, two backends
CLUSTER_TESTS := tests/test_partitioned.py tests/test_buckets.py tests/test_spans.py tests/test_flash_sale.py tests/test_idempotency.py tests/test_allocation_split.py tests/test_sales.py \
	tests/test_lifecycle.py tests/test_expiry.py tests/test_rebuild.py tests/test_soldout.py tests/test_model.py
SOAK_ARGS ?= --seed 1 --faults 20 --orders 100000
# The console (console/, Vue + Vite): built into console/dist, which the gateway serves at /console.
NPM := $(shell command -v npm 2>/dev/null)
CONSOLE_DEPS := console/node_modules/.installed
CONSOLE_BUILD := console/dist/index.html
CONSOLE_SOURCES := $(shell find console/src -type f 2>/dev/null) console/index.html console/package.json \
	console/vite.config.ts console/tsconfig.json

.PHONY: all install console console-if-npm run test test-cluster fuzz soak bench locust clean help

all: test

help:
	@echo "make run    install into .venv and start the gateway (embedded Valkey + PostgreSQL under .data/)"
	@echo "make test   install into .venv, build the console, and run the whole suite against real servers"
	@echo "make test-cluster  the partitioned, hot-SKU bucket, across-partition, flash-sale, idempotency, split, sales, lifecycle, expiry, rebuild and sold-out tests on a local 3-primary Valkey Cluster, 3 partitions (make test runs it too)"
	@echo "make console  build the ops console into console/dist (npm ci, npm run build; needs Node 20 and npm)"
	@echo "make fuzz   the API fuzzed against its OpenAPI document, longer and with fresh random cases (FUZZ_EXAMPLES=500 per operation)"
	@echo "make soak   the seeded fault soak: a flash sale against serve through kills, stops, restarts, network faults and a power cut, then 0 lost / duplicated / oversold (SOAK_ARGS='--seed 1 --faults 20 --orders 100000')"
	@echo "make bench  ceiling vs naive vs gateway, prints the table, writes bench/results/ (BENCH_ARGS=--quick)"
	@echo "make locust headless Locust flash sale against a running gateway (LOCUST_HOST)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# npm ci when node_modules is missing or older than the lock file; the build when dist is
# missing or older than any source
$(CONSOLE_DEPS): console/package-lock.json
	cd console && npm ci --no-audit --no-fund
	touch $(CONSOLE_DEPS)

$(CONSOLE_BUILD): $(CONSOLE_DEPS) $(CONSOLE_SOURCES)
	cd console && npm run build

console: $(CONSOLE_BUILD)

# run and test build the console when npm is there; without it the gateway still runs and
# /console says how to build, and the browser tests skip
console-if-npm:
ifneq ($(NPM),)
	@$(MAKE) --no-print-directory console
else
	@echo "warning: npm not found: the console is not built (/console says how; needs Node 20 and npm)" >&2
endif

run: install console-if-npm
	$(PY) -m gateway serve

test: install console-if-npm
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-cluster

test-cluster: install
	OMS_TEST_CLUSTER=1 OMS_TEST_PARTITIONS=3 $(PY) -m pytest -n $(CLUSTER_WORKERS) --dist loadfile --no-loadscope-reorder $(CLUSTER_TESTS) $(PYTEST_ARGS)

fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

soak: install
	$(PY) -m bench.soak $(SOAK_ARGS)

bench: install $(BENCH_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

locust: install $(BENCH_STAMP)
	$(VENV)/bin/locust -f bench/locustfile.py --headless -u 200 -r 50 -t 30s --host $(LOCUST_HOST)

clean:
	rm -rf $(VENV) .data .pytest_cache console/dist console/node_modules
