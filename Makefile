# The two commands a newcomer runs: `make demo` and `make test`. Both work offline.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_INDEX ?=  # e.g. https://download.pytorch.org/whl/cpu where torch 2.13.0 is not on disk

.PHONY: setup demo test bench browser clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on disk; any other torch request downloads a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/neuralda demo

test: setup browser
	$(PY) -m pytest

# The page's test drives Debian's Chromium (Playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium) \
		|| echo "could not install chromium: the browser test will skip"

bench: setup
	$(PY) bench/train_speed.py
	$(PY) bench/generate_speed.py
	$(PY) bench/serve_load.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
