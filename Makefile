# `make test` goes from a fresh machine to a green suite; `make demo` runs the
# main job once it exists. Everything else is a step of those two.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install build test test-unit test-kernel bench bench-quick clean demo

install: $(STAMP)

$(STAMP): pyproject.toml setup.py tools/install_system_deps.sh
	./tools/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Build requirements go into the venv too: `make build` rebuilds in place with them.
	$(PY) -m pip install -q 'setuptools>=77' wheel 'cffi>=1.16' 'Cython>=3.0'
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Rebuild the cffi binding, Cython codec and BPF objects in place after edits.
build: install
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q tests

test-unit: build
	$(PY) -m pytest -q tests/unit

test-kernel: build
	$(PY) -m pytest -q tests/kernel

bench-quick: build
	for b in benchmarks/bench_*.py; do $(PY) $$b --quick || exit 1; done

bench: build
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info calico_ebpf/_bpf/*.o
	find calico_ebpf -name '*.so' -delete

# The main job: a two-node lab cluster with our datapath on every node, real
# traffic, PASS/FAIL per check, then teardown (root; see `calico-ebpf demo -h`).
demo: build
	$(PY) -m calico_ebpf.cli.main demo
