# Everything a fresh machine with Python 3.11 and make needs: `make run`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast promtool bench figures config lock clean clean-kernels

# The virtualenv is rebuilt whenever the declared dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

run: $(STAMP)
	$(BIN)/becomingone run

# promtool runs the alerting rules' unit tests (tests/test_prometheus_rules.py skips them without it).
# Where apt-get is available and we are root it comes from Debian's `prometheus` package; elsewhere
# this only says so. Nothing happens once promtool is on the PATH, and it never fails the build.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing promtool (apt-get install prometheus)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } || \
	    echo "make: could not install promtool; the rule tests will skip" >&2; \
	  else \
	    echo "make: promtool not found and not installable here (apt-get install prometheus); the rule tests will skip" >&2; \
	  fi; }

# pytest exits 5 when it collected nothing; that is a broken suite, not a pass.
test: $(STAMP) promtool
	@$(BIN)/python -m pytest --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The quick loop while editing: everything but the tests marked `slow` (kill -9 loops, whole
# flows against a broker, memory churn). CI runs `make test`, all of it.
test-fast: $(STAMP) promtool
	@$(BIN)/python -m pytest -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The end-to-end benchmark (its own local broker) and the kernel benchmark, one report.
bench: $(STAMP)
	$(BIN)/python -m bench.pipeline --write docs/benchmarks.md

figures: $(STAMP)
	$(BIN)/python docs/figures/coherence_vs_jitter.py docs/figures/coherence_vs_jitter.png
	$(BIN)/python docs/figures/mesh_coupling.py docs/figures/mesh_coupling.png
	$(BIN)/python docs/figures/raw_examples.py docs/figures/raw_examples.png
	$(BIN)/python docs/figures/raw_settings.py docs/figures/raw_settings.png

# The embedded default, then a check of every shipped config.
config: $(STAMP)
	$(BIN)/becomingone config
	@for f in config/*.yaml; do printf '%s: ' $$f; $(BIN)/becomingone config --check --config $$f || exit 1; done

# The container's runtime dependencies, pinned with their hashes (deploy/Dockerfile installs them with
# --require-hashes). pip-tools runs in a throwaway virtualenv, not in .venv: it is no dependency of ours.
# Only PyPI is asked (no local wheel directories or extra indexes from the pip config), so every hash is
# one of PyPI's files. Refresh after changing [project] dependencies in pyproject.toml.
LOCK       := deploy/requirements.lock
LOCK_INDEX ?= https://pypi.org/simple
lock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && \
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$$tmp/bin/python" -m pip install --quiet --index-url $(LOCK_INDEX) pip-tools && \
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/bin/pip-compile" --quiet \
	  --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --index-url $(LOCK_INDEX) --output-file $(LOCK) pyproject.toml

# Numba's on-disk cache of a kernel is keyed to its own module: it is not rebuilt when a helper it
# inlines from another module (operators/columnar_panes.py, operators/lag.py, ...) changes.
clean-kernels:
	find flows operators schemas connectors bench \( -name '*.nbi' -o -name '*.nbc' \) -delete

clean: clean-kernels
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
