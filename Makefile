# The course's commands. Every target sets up .venv first when it is missing or out of date.
#   make lab     start JupyterLab on notebooks/
#   make test    ruff, unit tests and every notebook executed in quick mode
#   make full    every notebook in full mode (meant for a GPU), results into data/results/
#   make bench   throughput benchmarks (ratios measured in the same run)
#   make plan    full mode's plan: every notebook's full budget counted and priced for one GPU machine

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# torch is installed on its own, first: anything that depends on it would otherwise pull a multi-GB CUDA build.
TORCH_SPEC ?= $(shell grep -E '^torch==' requirements.txt)
CELL_TIMEOUT ?= 600
# make full: notebooks side by side, each lane on its share of the cores, the longest first, so that the CPU-bound
# ones overlap the GPU-bound ones (the lanes and order that make plan finds fastest).
FULL_JOBS ?= 3
FULL_ORDER ?= 10,08,03,07,01,04,02,09,05,06,00
# pytest workers: two files at a time keep both cores busy through the serial stretches of each notebook. Each
# runs torch on one thread: with more threads than cores, OpenMP's waiting threads made a notebook's own training
# (00's) four times slower beside another notebook, and the whole notebook half of the suite 1.5x slower.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
# Extra JupyterLab options, e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=

# Wheels for an offline GPU machine with its own Python 3.12 and torch (see README, "Full mode on a GPU").
WHEEL_PLATFORM := --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any
RUNNER_PINS = $(shell grep -iE '^(papermill|nbclient|nbformat|ipykernel|ipywidgets|anywidget|plotly|pandas|numpy|scipy|scikit-learn|gymnasium|tqdm|safetensors|tokenizers)==' requirements.txt)
TORCH_USER_PINS = $(shell grep -iE '^(stable-baselines3|torch-pruning)==' requirements.txt)

.PHONY: setup lab test test-browser site full bench plan clean-notebooks wheelhouse

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --quiet --no-deps -e .
	touch $@

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

# The test suite also needs the cluster extra (Ray), which `make lab` leaves out.
$(TEST_STAMP): $(STAMP) requirements-cluster.txt
	$(BIN)/python -m pip install --quiet --quiet -r requirements-cluster.txt
	touch $@

test: $(TEST_STAMP)
	$(BIN)/ruff check lib tests benchmarks notebooks
	$(BIN)/ruff format --check lib tests benchmarks
	$(BIN)/python -m efflab.clean_notebooks --check notebooks/*.ipynb
	EFFLAB_MODE=quick OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(CELL_TIMEOUT) -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The notebooks in JupyterLab in Debian's Chromium (Playwright drives it; no browser is downloaded), then the
# static edition in the same browser. NOTEBOOKS=00,05 limits both to those notebooks.
NOTEBOOKS ?=
CHROMIUM := /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP) requirements-browser.txt
	$(BIN)/python -m pip install --quiet --quiet -r requirements-browser.txt
	touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "Chromium is missing at $(CHROMIUM): install Debian's package as root (apt-get install chromium)"; \
		exit 1; \
	fi
	@test -x $(CHROMIUM) || (echo "apt-get ran, but $(CHROMIUM) is still missing"; exit 1)

test-browser: $(BROWSER_STAMP) $(CHROMIUM)
	$(BIN)/python tests/browser/check_notebooks.py $(if $(NOTEBOOKS),--only $(NOTEBOOKS)) --out runs/browser
	$(MAKE) site NOTEBOOKS=$(NOTEBOOKS)
	$(BIN)/python tests/browser/check_notebooks.py --site site --out runs/browser-site

site: $(STAMP)
	$(BIN)/python -m efflab.ui.site --execute $(if $(NOTEBOOKS),--only $(NOTEBOOKS)) --executed runs/site --out site

full: $(STAMP)
	$(BIN)/python -m efflab.run_notebooks --mode full --device auto --jobs $(FULL_JOBS) --only $(FULL_ORDER)

bench: $(STAMP)
	@for script in $(filter-out benchmarks/full_mode_plan.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

plan: $(STAMP)
	$(BIN)/python benchmarks/full_mode_plan.py

clean-notebooks: $(STAMP)
	$(BIN)/python -m efflab.clean_notebooks notebooks/*.ipynb

wheelhouse: $(STAMP)
	$(BIN)/python -m pip download --quiet --quiet --dest wheelhouse $(WHEEL_PLATFORM) $(RUNNER_PINS)
	$(BIN)/python -m pip download --quiet --quiet --dest wheelhouse $(WHEEL_PLATFORM) --no-deps $(TORCH_USER_PINS) $(shell grep -iE '^cloudpickle' requirements.txt || echo cloudpickle)
	printf '%s\n' $(RUNNER_PINS) $(TORCH_USER_PINS) > wheelhouse/requirements.txt
	$(BIN)/python -m pip download --quiet --quiet --dest wheelhouse $(WHEEL_PLATFORM) --no-deps -r requirements-nodeps.txt
	grep -E '^[A-Za-z0-9]' requirements-nodeps.txt > wheelhouse/requirements-nodeps.txt
	@ls wheelhouse/*.whl | wc -l | xargs echo "wheels in wheelhouse/:"
