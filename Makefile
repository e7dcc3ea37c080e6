# One verb per task. Each verb creates or reuses the virtual environment by itself. uv (pinned, installed into the venv
# by pip) installs the packages, bytecode compiled as pip would: a cold install takes less than half of pip's time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
UV_VERSION := 0.13.9
# A second venv on Python 3.12, the Python of OpenShift AI's current workbench images (tools/find-python finds it).
VENV312 ?= .venv312
STAMP312 := $(VENV312)/.installed
PY312_TESTS := tests/test_contract.py tests/test_ingest.py tests/test_storage.py tests/test_run_parameters.py tests/test_train_evaluate.py

.PHONY: run test test-py312 compile docs bench quality serve-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	$(UV) pip check --quiet --python $(BIN)/python
	touch $(STAMP)

# Not bytecode compiled at install: test-py312 writes the bytecode of what it imports (a fraction of what is installed)
# on first import, which halves the CPU time of a fresh check.
$(STAMP312): pyproject.toml | $(STAMP)
	python312=$$(tools/find-python 3.12) && $(UV) venv --quiet --clear --python "$$python312" $(VENV312)
	$(UV) pip install --quiet --python $(VENV312)/bin/python -e '.[dev]'
	$(UV) pip check --quiet --python $(VENV312)/bin/python
	touch $(STAMP312)

run: $(STAMP) ## train, evaluate and store both models locally (no cluster)
	$(BIN)/model-pipelines run all --local

# The Python 3.12 check runs beside the suite (its install waits on the network, the suite on the CPU); its log is
# printed in full when it fails, and make test fails if either does.
PY312_LOG := build/test-py312.log

test: $(STAMP) ## the whole test suite, end-to-end tests included, on four xdist workers, and beside it the Python 3.12 check (installs Prometheus with apt when root)
	tools/ensure-test-tools
	$(BIN)/python -m compileall -q components pipelines  # the tests start hundreds of step and server processes: none compiles the project again (PYTHONDONTWRITEBYTECODE may be set)
	@mkdir -p build; echo "make test: the Python 3.12 check (make test-py312) runs beside the suite, logging to $(PY312_LOG)"
	@$(MAKE) --no-print-directory test-py312 > $(PY312_LOG) 2>&1 & py312=$$!; \
	$(BIN)/pytest -q --durations=15 -n 4 --dist loadgroup --no-loadscope-reorder; suite=$$?; \
	wait $$py312; py312_status=$$?; \
	if [ $$py312_status -eq 0 ]; then echo "make test: the Python 3.12 check passed: $$(grep -c '' $(PY312_LOG)) lines in $(PY312_LOG)"; \
	else cat $(PY312_LOG); echo "make test: the Python 3.12 check failed (its log is above, and in $(PY312_LOG))"; fi; \
	[ $$suite -eq 0 ] && [ $$py312_status -eq 0 ]

test-py312: $(STAMP312) ## under Python 3.12: the unit tests of contract, ingest, train, evaluate, store and run parameters, and a compile equal to compiled/
	PYTHONDONTWRITEBYTECODE= $(VENV312)/bin/pytest -q -p no:cacheprovider --basetemp=build/py312-tmp $(PY312_TESTS)
	output=$$(mktemp -d) && PYTHONDONTWRITEBYTECODE= $(VENV312)/bin/model-pipelines compile --output-dir "$$output" >/dev/null \
	  && for file in "$$output"/*.yaml; do cmp "$$file" "compiled/$${file##*/}" || exit 1; done \
	  && echo "Python 3.12 compile: $$(ls "$$output" | wc -l) files equal to compiled/" && rm -r "$$output"

compile: $(STAMP) ## recompile compiled/ (the default and one folder per platform profile)
	$(BIN)/model-pipelines compile --all-platforms --output-dir compiled

docs: $(STAMP) ## regenerate the knob table in docs/parameters.md from components/kfp/config.py
	$(BIN)/python tools/parameter_table.py

bench: $(STAMP) ## local-run overhead and serving latency as ratios against an in-process baseline; load during a rolled-back canary
	$(BIN)/python -m benchmarks.local_run
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.load

DATA ?= ../shared/datasets
quality: $(STAMP) ## model quality on real data against the upstream recipes, the detector's fit time against rows, and its frontier (benchmarks/results/)
	$(BIN)/python -m benchmarks forecast --data-dir $(DATA)/datacenter-traces --json benchmarks/results/forecast.json
	$(BIN)/python -m benchmarks nab --data-dir $(DATA)/nab --json benchmarks/results/nab.json
	$(BIN)/python -m benchmarks anomaly --data-dir $(DATA)/smd --json benchmarks/results/anomaly.json
	$(BIN)/python -m benchmarks fit-scaling --data-dir $(DATA)/smd --json benchmarks/results/fit-scaling.json
	$(BIN)/python -m benchmarks frontier --smd-dir $(DATA)/smd --nab-dir $(DATA)/nab --json benchmarks/results/frontier.json

serve-stop: $(STAMP) ## stop the local model servers that `make run` left serving
	$(BIN)/model-pipelines serve stop

clean: serve-stop
	rm -rf .model-pipelines
