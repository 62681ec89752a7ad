# Two commands on a fresh machine:
#   make demo   set up .venv, prepare synthetic logs, train ELASTIC a few minutes on CPU, evaluate
#   make test   set up .venv and run the test suite
PY ?= python3
# make demo DEMO_ARGS='trainer.max_epochs=1 ...': extra key=value overrides for the demo
DEMO_ARGS ?=
# make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu: the CPU-only torch build (default: your pip index)
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-encoder scale-run clean

$(BIN)/elastic-pl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/elastic-pl

demo: setup
	WANDB_MODE=offline $(BIN)/elastic-pl demo --config configs/default.yaml $(DEMO_ARGS)

test: setup
	$(BIN)/pytest -q

bench-encoder: setup
	$(BIN)/python -m bench.encoder

# the scale run, timed per stage (SCALE_CONFIG=configs/scale-10m.yaml; EVENTS=1e6 for a scaled-down one)
scale-run: setup
	PYTHON=$(BIN)/python bash bench/scale_run.sh $(or $(SCALE_CONFIG),configs/scale-1m.yaml)

clean:
	rm -rf $(VENV) runs
