# podium — `make demo` trains digits on real images; `make test` runs the test suite.
# Both build the virtual environment first when it is missing or pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
UI_PORT ?= 5000

.PHONY: setup browser postgres demo test test-fast lint format ui leaderboard review bench bench-report clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(MAKE) --no-print-directory browser
	$(MAKE) --no-print-directory postgres
	touch $@

# Headless Chromium renders report.html in a test. Installed from Debian's packages when missing
# and apt is usable (root); elsewhere the test skips with a message (under CI=true it must run).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "podium: Debian's chromium is not installed and cannot be installed here; the report test will skip"

# The tracking-server tests start a throwaway PostgreSQL cluster (initdb, pg_ctl) and an MLflow
# server on it. Debian's postgresql is installed when missing and apt is usable (root); elsewhere
# those tests skip with a message (under CI=true they must run). Its own cluster service is not used.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "podium: Debian's postgresql is not installed and cannot be installed here; the tracking-server tests will skip"

demo: setup
	$(PY) train.py experiment=digits
	$(PY) train.py experiment=ariel_v50 data=ariel_toy

# Two workers, one intra-op thread each: the suite is mostly small training subprocesses, and a
# test file stays on one worker (its module fixtures are built once).
PYTEST_WORKERS ?= 2
test: setup browser postgres
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

ui: setup
	mkdir -p mlruns/artifacts
	$(VENV)/bin/mlflow ui --port $(UI_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts

# Rank the finished runs of one experiment (intervals, gates, champion): make leaderboard EXP=digits
EXP ?= digits
leaderboard: setup
	$(PY) leaderboard.py experiment=$(EXP)

# Review suspect labels in the browser: make review DATA=digits SOURCE=outputs/digits/<cv run>
DATA ?= digits
review: setup
	$(PY) review.py data=$(DATA) source=$(SOURCE)

# Every benchmark writes benchmarks/results/<name>.json; report.py renders README's section from them.
# One at a time, nothing else running: the timing figures are sensitive to load.
bench: setup
	$(PY) benchmarks/digits.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/ariel_calibration.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/faults.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/digits_cv.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/ariel_quality.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/video_postfilter.py
	$(PY) benchmarks/shapes_det.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/detection_eval.py
	$(PY) benchmarks/lens.py
	$(PY) benchmarks/review.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/tracking_server.py
	$(PY) benchmarks/report.py

bench-report: setup
	$(PY) benchmarks/report.py --check

clean-runs:
	rm -rf outputs mlruns/mlflow.db mlruns/artifacts

# The GPU check (benchmarks/gpu_check.py): on a CUDA machine every family, the gpu-marked tests and
# the throughputs in at most 8 minutes, results in benchmarks/results/gpu_check.json; elsewhere it
# prints its plan and exits 0. No setup: the CUDA machine brings its own torch, and the packages
# podium adds travel as wheels in .gpu-wheels, fetched beforehand where PyPI is reachable
# (make gpu-wheels; GPU_PYTHONS are the Python versions fetched for).
.PHONY: gpu-check gpu-wheels docker-lint
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
GPU_PYTHONS ?= 3.11 3.12

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py

gpu-wheels: setup
	$(PY) benchmarks/gpu_check.py --fetch-wheels --python-versions $(GPU_PYTHONS)

# Dockerfile.gpu: hadolint, every package it installs resolved on PyPI, torch's CUDA against the image's.
docker-lint: setup
	$(PY) benchmarks/gpu_check.py --check-docker
