# Two commands on a fresh machine:
#   make demo   set up .venv, prepare synthetic logs, train ELASTIC a few minutes on CPU, evaluate
#   make test   set up .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-encoder clean

$(BIN)/elastic-pl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/elastic-pl

demo: setup
	WANDB_MODE=offline $(BIN)/elastic-pl demo --config configs/default.yaml

test: setup
	$(BIN)/pytest -q

bench-encoder: setup
	$(BIN)/python -m bench.encoder

clean:
	rm -rf $(VENV) runs
