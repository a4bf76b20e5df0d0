# `make demo` and `make test` work on a fresh machine: they create .venv and install into it when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= cpu,dev,sim,serve,export

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lapa demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Speed checks (tables on stdout); see docs/benchmarks.md for the figures measured so far.
bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/laq_throughput.py --sizes tiny,medium
	$(BIN)/python benchmarks/laq_throughput.py --sizes tiny,medium --precision bf16
	$(BIN)/python benchmarks/label_throughput.py
	$(BIN)/python benchmarks/sim_speed.py
	$(BIN)/python benchmarks/vla_throughput.py --threads 2
	$(BIN)/python benchmarks/policy_latency.py --threads 2 --onnx
	$(BIN)/python benchmarks/serve_load.py --make-tiny
	$(BIN)/python benchmarks/sim_learnability.py   # ~25 minutes: the learnability curve (docs/simulator.md)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
