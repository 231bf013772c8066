# leadflow: `make run` for the local stack, `make test` for every test.
# Both install and start what they need (the broker, PostgreSQL) and reuse
# what is already there.

SHELL := /bin/bash
CARGO ?= cargo
KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
export KAFKA_BOOTSTRAP_SERVERS
LEADFLOW_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export LEADFLOW_TEST_DATABASE_URL

BIN := target/debug/leadflow
SIM_LEADS ?= 2000
SIM_DAYS ?= 60
RUN_ARGS ?=

BENCH_MODEL_ROWS ?= 40000,1000000
# scikit-learn's GradientBoostingClassifier needs well over ten minutes at a
# million rows; it runs up to this many.
BENCH_GBC_MAX_ROWS ?= 200000

.PHONY: run test bench build broker broker-stop postgres topics fmt lint clean test-venv fuzz

build:
	$(CARGO) build

broker:
	scripts/broker.sh start

broker-stop:
	scripts/broker.sh stop

postgres:
	scripts/postgres.sh

topics: build broker
	@for i in 1 2 3 4 5; do $(BIN) topics create && exit 0; echo "topics: broker not ready, retrying" >&2; sleep 2; done; exit 1

run: build broker topics
	@# The local broker keeps its topics in memory: a database older than the
	@# running broker describes a log that no longer exists.
	@if [ -f data/leadflow.db ] && [ "$$HOME/.cache/leadflow/broker/broker.pid" -nt data/leadflow.db ]; then \
	  echo "run: the local broker was restarted; starting from an empty data/leadflow.db"; \
	  rm -f data/leadflow.db data/leadflow.db-wal data/leadflow.db-shm; fi
	$(BIN) migrate
	$(BIN) simulate --leads $(SIM_LEADS) --days $(SIM_DAYS)
	@echo
	@echo "  The processor now consumes the simulated traffic into data/leadflow.db (SQLite)."
	@echo "  In another terminal, look at the state:"
	@echo "      $(BIN) leads count"
	@echo "      $(BIN) leads list --limit 20"
	@echo "      $(BIN) leads get <lead id from the list>"
	@echo "      sqlite3 data/leadflow.db 'SELECT stage, COUNT(*) FROM leads GROUP BY stage'"
	@echo "      curl -s http://127.0.0.1:9464/metrics | grep ^leadflow_"
	@echo "  Stop it with Ctrl-C (it finishes the batch in hand first)."
	@echo
	$(BIN) run $(RUN_ARGS)

# Python side of the tests, in a venv of its own, created once and reused:
# fastavro for the Avro interoperability test (tests/interop.rs),
# schemathesis for the REST API fuzz run (tests/api.rs).
TEST_VENV ?= $(HOME)/.cache/leadflow/test-venv
LEADFLOW_TEST_PYTHON ?= $(TEST_VENV)/bin/python
export LEADFLOW_TEST_PYTHON
LEADFLOW_TEST_SCHEMATHESIS ?= $(TEST_VENV)/bin/st
export LEADFLOW_TEST_SCHEMATHESIS

$(TEST_VENV)/.installed-v2:
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet fastavro==1.13.1 schemathesis==4.32.5
	touch $@

test-venv: $(TEST_VENV)/.installed-v2

test: broker postgres test-venv
	@# The benchmark's smoke run first (cargo test passes no --bench), so
	@# that the test suite's own summary closes the output.
	$(CARGO) test --bench throughput --bench models --bench nurture --bench notify --bench forecast --bench gdpr
	$(CARGO) test --lib --bins --tests -- --test-threads 4

# Python side of the model benchmark: scikit-learn and LightGBM in a venv of
# its own, created once and reused.
BENCH_VENV ?= $(HOME)/.cache/leadflow/bench-venv

$(BENCH_VENV)/.installed-v3:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet scikit-learn lightgbm pandas
	@# ISLP only for its data files (benches/ml/small_data.py reads them without importing it).
	$(BENCH_VENV)/bin/pip install --quiet --no-deps ISLP
	@# statsforecast: the forecast benchmark's AutoETS anchor.
	$(BENCH_VENV)/bin/pip install --quiet statsforecast
	touch $@

bench: broker postgres $(BENCH_VENV)/.installed-v3
	@command -v wrk >/dev/null || apt-get install -y wrk
	$(CARGO) bench --bench throughput
	$(CARGO) bench --bench api
	$(CARGO) bench --bench nurture
	$(CARGO) bench --bench notify
	$(CARGO) bench --bench gdpr
	LEADFLOW_BENCH_PYTHON=$(BENCH_VENV)/bin/python LEADFLOW_BENCH_GBC_MAX_ROWS=$(BENCH_GBC_MAX_ROWS) \
		$(CARGO) bench --bench models -- --rows $(BENCH_MODEL_ROWS)
	LEADFLOW_BENCH_PYTHON=$(BENCH_VENV)/bin/python $(CARGO) bench --bench models -- --small
	LEADFLOW_BENCH_PYTHON=$(BENCH_VENV)/bin/python $(CARGO) bench --bench forecast

# Coverage-guided fuzzing of the decode path (fuzz/fuzz_targets/decode.rs)
# for FUZZ_SECONDS, with libFuzzer through cargo-fuzz on stable Rust
# (no sanitizer: `-s none`). cargo-fuzz is installed once into the tools
# folder the broker uses. Findings land in fuzz/artifacts/decode/.
FUZZ_SECONDS ?= 300
TOOLS ?= $(HOME)/.cache/leadflow/tools
CARGO_FUZZ := $(TOOLS)/bin/cargo-fuzz

$(CARGO_FUZZ):
	CARGO_TARGET_DIR=$(HOME)/.cache/leadflow/fuzz-tool-target \
		$(CARGO) install cargo-fuzz --locked --root $(TOOLS)

fuzz: $(CARGO_FUZZ)
	mkdir -p fuzz/corpus/decode
	cd fuzz && $(CARGO_FUZZ) fuzz run decode -s none corpus/decode seeds/decode -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=4096 -rss_limit_mb=2048

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	rm -rf data
