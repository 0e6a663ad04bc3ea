# vae-bench: every target bootstraps its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch requirement, and extra pip arguments for fetching it (e.g. a CUDA build):
#   make install TORCH=torch==2.13.0 TORCH_PIP_ARGS="--index-url <PyTorch wheel index for your CUDA>"
TORCH          ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed
# The optional Ray extra (--backend ray): installed by `make install-ray`, `make test` and
# `make bench BACKEND=ray`; the local path never imports it.
RAY       ?= ray==2.60.0
RAY_STAMP := $(VENV)/.installed-ray

# A newcomer's run goes to out/ (git-ignored) and ends compared with the committed reference in
# REFERENCE; `make bench OUT=results` regenerates the reference on purpose.
OUT       ?= out
REFERENCE ?= results
DEVICE ?= auto
SUITE  ?= default
# Seeds 0..SEEDS-1 of every configuration (empty: the suite's own; the reference runs SEEDS=5).
SEEDS  ?=
# Configurations trained at once (each in its own process; 1 = all in the driver process) and
# torch threads per run. auto = cores / CPUS_PER_RUN (1 on CUDA): on the 2-core reference machine
# two 1-thread runs side by side train faster in total than one 2-thread run (README).
WORKERS      ?= auto
CPUS_PER_RUN ?= 1
# BACKEND=ray runs each configuration as a Ray task: on a new local Ray instance, or on the
# cluster at RAY_ADDRESS (auto or HOST:PORT), with GPUS_PER_RUN GPUs each (README).
BACKEND      ?= local
RAY_ADDRESS  ?=
GPUS_PER_RUN ?= 0

.PHONY: install install-ray test bench plots lint clean bench-baseline bench-check

install: $(STAMP)

install-ray: $(RAY_STAMP)

# Re-runs only when the pins change; a second `make install` installs nothing.
$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(RAY)"
	touch $(RAY_STAMP)

# Benchmark bodies (tests/benchmarks) run once each as plain tests, untimed. The Ray tests need
# the extra, so it is installed here: none of them is skipped. On every core (pytest-xdist), a
# test file to a worker, so that each module's shared set-up (its fixtures, its caches) is made
# once, the slowest files first (tests/conftest.py's SLOWEST_FIRST). (--dist loadgroup with
# xdist_group marks would also keep the tests that start processes apart, but pytest-xdist 3.8.0
# under pytest 9.2 ignores the marks: measured.)
TEST_WORKERS ?= auto
test: $(STAMP) $(RAY_STAMP)
	$(PY) -m pytest -q --benchmark-disable -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The main job: train every configuration of $(SUITE) ($(WORKERS) at a time, $(CPUS_PER_RUN) torch
# threads each), time each alone afterwards (the cost pass), compute the toy figure's data
# (toy.csv), write the report, then say whether the numbers agree with the reference's (every
# configuration both ran, final metrics within their intervals; timings not judged); skipped when
# $(OUT) is the reference. Starts afresh (replacing $(OUT)/runs.csv); `make bench RESUME=1`
# continues a killed run instead.
bench: $(STAMP) $(if $(filter ray,$(BACKEND)),$(RAY_STAMP))
	$(PY) -m bench run --suite $(SUITE) --device $(DEVICE) --out $(OUT) \
		--workers $(WORKERS) --cpus-per-run $(CPUS_PER_RUN) --backend $(BACKEND) \
		$(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) --gpus-per-run $(GPUS_PER_RUN) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(RESUME),--resume,--overwrite)
	$(PY) -m bench toy --out $(OUT)
	$(PY) -m bench report --out $(OUT)
	$(if $(filter $(abspath $(REFERENCE)),$(abspath $(OUT))),,\
		$(PY) -m bench agree --out $(OUT) --reference $(REFERENCE))

# Tables and plots from stored results, without training or computing anything: the committed
# reference in $(REFERENCE), or the directory given as OUT (`make plots OUT=out`).
plots: $(STAMP)
	$(PY) -m bench report --out $(if $(filter command line environment,$(origin OUT)),$(OUT),$(REFERENCE))

# Performance regression check with pytest-benchmark (tests/benchmarks). Timings belong to one
# machine and live in $(BENCH_STORAGE)/ (git-ignored): `make bench-baseline` before a change,
# `make bench-check` after it. bench-check fails when any benchmark's median is more than
# BENCH_THRESHOLD per cent slower than in the newest saved baseline. 40% is twice the worst
# run-to-run change seen on the shared 2-core reference machine (13 re-runs of an unchanged tree:
# medians moved by at most +19%); a 2x slower training step measured +70% to +105% (see README).
BENCH_THRESHOLD ?= 40
BENCH_STORAGE   ?= .benchmarks
# Extra pytest arguments for both targets, e.g. BENCH_ARGS="-k train_step".
BENCH_ARGS      ?=
BENCH_PYTEST     = $(PY) -m pytest -q tests/benchmarks --benchmark-only \
                   --benchmark-storage=$(BENCH_STORAGE) --benchmark-sort=name \
                   --benchmark-columns=min,median,iqr,max,rounds $(BENCH_ARGS)

bench-baseline: $(STAMP)
	$(BENCH_PYTEST) --benchmark-save=baseline

# The newest *_baseline.json, not the newest file: other saved runs never become the reference.
bench-check: $(STAMP)
	@baseline=$$(ls -1t $(BENCH_STORAGE)/*/*_baseline.json 2>/dev/null | head -n 1); \
	if [ -z "$$baseline" ]; then \
		echo "bench-check: no baseline in $(BENCH_STORAGE)/; run \`make bench-baseline\` first." >&2; \
		exit 2; \
	fi; \
	echo "bench-check: comparing with $$baseline; fails when a median is >$(BENCH_THRESHOLD)% slower"; \
	$(BENCH_PYTEST) --benchmark-compare=$$baseline --benchmark-compare-fail=median:$(BENCH_THRESHOLD)%

lint: $(STAMP)
	$(PY) -m ruff check vae_core bench tests
	$(PY) -m ruff format --check vae_core bench tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
