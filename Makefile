# The two commands of the quickstart, plus the benchmarks.
#   make demo   set up .venv and run the whole chain on built-in phantoms
#   make test   set up .venv and run the test suite
#   make bench  set up .venv and run the benchmarks (writes bench_output/)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test demo bench clean

install: $(INSTALLED)

# Reinstall whenever the dependency list changes.
$(INSTALLED): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[test,dask]'
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 tests tfds_rsna

demo: $(INSTALLED)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh demo_output

bench: $(INSTALLED)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/bench.sh bench_output

clean:
	rm -rf demo_output bench_output
