# The two commands of the quickstart, plus the benchmarks.
#   make demo   set up .venv and run the whole chain on built-in phantoms
#   make test   set up .venv and run the test suite (without the slow tests)
#   make test-slow  the slow tests: scale, memory, multi-process
#   make bench  set up .venv and run the benchmarks (writes bench_output/)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test test-slow test-slow-ci demo bench clean

install: $(INSTALLED)

# Reinstall whenever the dependency list changes.
$(INSTALLED): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[cpu,test,dask]'
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 -m "not slow" tests tfds_rsna

# The scale, memory and multi-process tests (marked slow).
test-slow: $(INSTALLED)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 -m slow tests tfds_rsna || [ $$? -eq 5 ]  # 5: none collected

# What CI runs after `make test`: the slow tests but the heaviest (marked heavy), so the whole CI run stays under 30 min.
test-slow-ci: $(INSTALLED)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=25 -m "slow and not heavy" tests tfds_rsna || [ $$? -eq 5 ]

demo: $(INSTALLED)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh demo_output

bench: $(INSTALLED)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/bench.sh bench_output

clean:
	rm -rf demo_output bench_output
