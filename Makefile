# The two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit install system system-test bench stop clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## What pip cannot install: redis-server and Java (Spark); for the tests also PostgreSQL's initdb.
system:
	@.ci/system-deps

system-test:
	@.ci/system-deps --tests

## Both examples (fraud, delivery): data, features in Redis, two models, one gateway on
## 127.0.0.1:8000 serving both, a curl line for each; in the foreground (Ctrl-C stops it).
demo: system $(STAMP)
	$(VENV)/bin/mlgate demo

## The whole suite: unit tests, then integration tests on real MLflow, Ray Serve and HTTP.
## The pure tests (unit, contract, chart: no Ray, no Spark) run beside the integration tests, which
## spend much of their time waiting on Ray, Spark and servers to start: CI stays inside 20 minutes.
test: system-test $(STAMP)
	@$(PY) -m pytest tests/unit tests/contract tests/helm -q -p no:cacheprovider \
		--basetemp=/tmp/mlgate-pure-tests > .pure-tests.log 2>&1 & pure=$$!; \
	$(PY) -m pytest tests/integration --durations=15; rc=$$?; \
	wait $$pure; prc=$$?; echo "== unit, contract and chart tests (beside the integration tests):"; \
	if [ $$prc -eq 0 ]; then tail -n 3 .pure-tests.log; else cat .pure-tests.log; fi; \
	[ $$rc -eq 0 ] && [ $$prc -eq 0 ]

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

## Sequential latency of one predict call through each ingress (needs a trained demo model).
bench: $(STAMP)
	$(PY) loadtests/bench_predict.py --compare-ingress --calls 1000

## Locust load test with SLO gates (p99 latency, error rate, fallback rate) against a gateway that
## is already running on 127.0.0.1:8000: start one first with `.venv/bin/mlgate demo --detach`
## (this target does not). Reports in loadtests/reports/<timestamp>/; exit status 1 if a gate fails.
## More options: make loadtest LOADTEST_ARGS='--shape spike --slo-p99-ms 80'
.PHONY: loadtest
loadtest: $(STAMP)
	$(VENV)/bin/mlgate loadtest --duration 60s --users 32 $(LOADTEST_ARGS)

stop: $(STAMP)
	$(VENV)/bin/mlgate stop

clean:
	rm -rf .mlgate .pytest_cache .pure-tests.log

## Pinned runtime requirements of the images, from .venv (run after changing dependencies).
.PHONY: lock images
lock: $(STAMP)
	$(PY) docker/lock.py > docker/serving.txt
	$(PY) docker/lock.py spark > docker/jobs.txt

## The two images (needs a Docker engine): the gateway, and the Spark jobs with a JRE.
images:
	docker build --target serving -t mlgate:0.1.0 .
	docker build --target jobs -t mlgate-jobs:0.1.0 .
