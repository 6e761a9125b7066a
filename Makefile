# Two commands: `make demo` (install + main job: Hopper-v5 BC -> ReinFlow -> evaluation) and
# `make test` (install + tests). `make demo-2d` is the 2-D behaviour-cloning demo.
# Both create a local virtual environment in .venv on first use.
#
# torch is installed before everything else: with no torch present, pip would resolve the
# project's `torch` requirement to a multi-GB CUDA build. TORCH_SPEC picks the build; GPU
# users can pass their own (e.g. TORCH_SPEC="torch --index-url <your CUDA wheel index>"),
# or install torch into .venv themselves first, in which case it is kept as is.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo demo-2d test lint install clean docs wheel-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	# a .venv made before the distribution was renamed holds this package as "flowrl"
	$(BIN)/python -m pip uninstall -y -q flowrl 2>/dev/null || true
	$(BIN)/python -m pip install -e ".[dev,pipeline,video,kernels,mjx,mazes]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowrl-train experiment=main

demo-2d: $(STAMP)
	$(BIN)/python experiments/demo.py

# pytest exits with 5 when it collects no test; that is not a failure of the suite.
test: $(STAMP)
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (mkdocs.yml; the API pages come from the docstrings) into site/.
# --strict: any warning (a broken link, a docstring mkdocstrings cannot parse) fails the build.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The built wheel in a fresh virtualenv, from an empty folder: flowrl-train experiment=main,
# then flowrl-enjoy records a video (frames checked) and flowrl-eval evaluates (.ci/run too).
wheel-check:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" .ci/wheel_check.sh

clean:
	rm -rf $(VENV) outputs
