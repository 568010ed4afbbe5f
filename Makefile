# podium — `make demo` trains digits on real images; `make test` runs the test suite.
# Both build the virtual environment first when it is missing or pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
UI_PORT ?= 5000

.PHONY: setup demo test test-fast lint format ui bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(PY) train.py experiment=digits

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

ui: setup
	mkdir -p mlruns/artifacts
	$(VENV)/bin/mlflow ui --port $(UI_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

bench: setup
	$(PY) benchmarks/digits.py
	$(PY) benchmarks/overhead.py

clean-runs:
	rm -rf outputs mlruns/mlflow.db mlruns/artifacts
