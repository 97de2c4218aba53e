# slimray — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Pick another torch build here, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export MLFLOW_DISABLE_TELEMETRY ?= true
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run serve test test-fast bench bench-scale ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: install
	$(VENV)/bin/slimray $(ARGS)

serve: install  ## the registered model as a Ray Serve app on 127.0.0.1:8000 (ARGS: port=8001 ...)
	$(VENV)/bin/slimray serve $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

bench: install  ## every benchmark, one JSON object per line (about 6 minutes on 2 cores)
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/sweep_scaling.py
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/kd_gain.py

bench-scale: install  ## parallel inference and the Serve load test (about 8 minutes on 2 cores)
	$(PY) benchmarks/parallel_inference.py
	$(PY) benchmarks/serve_load.py

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs .pytest_cache
