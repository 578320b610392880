# Two entry points for a fresh machine: `make demo` (main job on built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision as a matching pair (torchvision has no CPU-only build on PyPI; the
# VLM processors need it). Both are installed before the project so pip does not pick others.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
EXTRAS ?= dev,vlm,ray

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Install torch first, so the project's `torch` requirement is already met.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/medrl demo

test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: venv
	for b in bench_env bench_replay bench_train bench_inference bench_predict bench_boxes; do \
		PYTHONPATH=. $(PY) -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
