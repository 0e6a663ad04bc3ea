# vae-bench: every target bootstraps its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch requirement, and extra pip arguments for fetching it (e.g. a CUDA build):
#   make install TORCH=torch==2.13.0 TORCH_PIP_ARGS="--index-url <PyTorch wheel index for your CUDA>"
TORCH          ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed

OUT    ?= results
DEVICE ?= auto
SUITE  ?= default

.PHONY: install test bench plots lint clean

install: $(STAMP)

# Re-runs only when the pins change; a second `make install` installs nothing.
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check vae_core bench tests
	$(PY) -m ruff format --check vae_core bench tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
