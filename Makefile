# fairlane: `make run` runs the demo, `make test` runs the tests. Both install what they need.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install services tools run test chaos lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	.ci/services

# promtool checks the alert rules; Debian's chromium runs the /ui/ browser tests (Playwright drives it);
# libfaketime (package faketime) skews the clocks of the clock-skew tests' processes.
tools:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v faketime >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null)

run: install services
	$(BIN)/fairlane demo

test: install services tools
	$(BIN)/python -m pytest -q --ignore=tests/chaos

# The chaos suite (tests/chaos/, a few minutes): worker SIGKILL and SIGTERM, scheduler leader SIGKILL,
# RabbitMQ and PostgreSQL unreachable for 5 s (through the suite's own TCP proxies).
# FAIRLANE_CHAOS_SERVICES=1 adds RabbitMQ stop/start and PostgreSQL restart: only where the
# services are this run's alone (.ci/run sets it), never on a machine others test on.
chaos: install services
	$(BIN)/python -m pytest -q -s tests/chaos

lint: install
	$(BIN)/ruff check src tests bench compat
	$(BIN)/ruff format --check src tests bench compat
	$(BIN)/mypy

# `make bench BENCH_ARGS="--drain-jobs 20000"` passes sizes to latency_throughput.py (see its --help).
bench: install services
	$(BIN)/python bench/latency_throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/fairness.py

clean:
	rm -rf $(VENV) .fairlane .pytest_cache .mypy_cache .ruff_cache

# `make compat`: Dramatiq 2.2.1's own tests on a plain RabbitmqBroker and on fairlane's broker
# (compat/README.md). COMPAT_ARGS="--broker fairlane" runs fairlane only, "--full" adds the
# repository's tests/middleware/, test ids (tests/test_actors.py::test_x) run just those.
.PHONY: compat
compat: install services
	$(BIN)/python compat/run.py $(COMPAT_ARGS)
