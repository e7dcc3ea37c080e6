# One verb per task. Each verb creates or reuses the virtual environment by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test compile bench quality serve-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

run: $(STAMP) ## train, evaluate and store both models locally (no cluster)
	$(BIN)/model-pipelines run all --local

test: $(STAMP) ## run the whole test suite, end-to-end tests included, on two xdist workers (installs Prometheus with apt when root)
	tools/ensure-test-tools
	$(BIN)/pytest -q --durations=15 -n 2 --dist loadgroup --no-loadscope-reorder

compile: $(STAMP) ## recompile compiled/ (the default and one folder per platform profile)
	$(BIN)/model-pipelines compile --all-platforms --output-dir compiled

bench: $(STAMP) ## local-run overhead and serving latency as ratios against an in-process baseline; load during a rolled-back canary
	$(BIN)/python -m benchmarks.local_run
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.load

DATA ?= ../shared/datasets
quality: $(STAMP) ## model quality on real data against the upstream recipes (benchmarks/results/)
	$(BIN)/python -m benchmarks forecast --data-dir $(DATA)/datacenter-traces --json benchmarks/results/forecast.json
	$(BIN)/python -m benchmarks nab --data-dir $(DATA)/nab --json benchmarks/results/nab.json
	$(BIN)/python -m benchmarks anomaly --data-dir $(DATA)/smd --json benchmarks/results/anomaly.json

serve-stop: $(STAMP) ## stop the local model servers that `make run` left serving
	$(BIN)/model-pipelines serve stop

clean: serve-stop
	rm -rf .model-pipelines
