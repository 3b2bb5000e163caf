# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   - set up, then run the main job end to end on a built-in demo model
#   make test   - set up, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Triton's interpreter runs the CUDA kernels on CPU tensors in the tests; it needs NumPy < 2,
# so both live in a folder of their own (tests/test_runtime_triton_interpreted.py)
INTERP := $(VENV)/triton-interpreter
# torch is pinned: 2.13.0 is the CPU wheel on this workplace's disk; an unpinned torch
# pulls a multi-GB CUDA build (REFERENCE.md section 6).
TORCH  := torch==2.13.0

.PHONY: venv demo test lint clean system-packages

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[runtime,plot,dev]'
	$(BIN)/python scripts/get_helm.py
	# checkov pins versions that clash with gkit's own (cyclonedx, packaging): its own venv
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet checkov
	touch $(STAMP)

$(INTERP)/.installed: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(INTERP) triton==3.5.0 'numpy<2'
	touch $@

system-packages:
	bash scripts/install-system-packages.sh

demo: venv
	$(BIN)/gkit demo --output demo-out

test: venv $(INTERP)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .venv-checkov demo-out build *.egg-info
