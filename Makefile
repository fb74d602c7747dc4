# make run   : set up .venv (if missing) and run the README's main job (digits, cbnn, 1 Ray Train worker)
# make test  : set up .venv (if missing) and run the test suite
# make bench : the benchmarks in bench/ (JSON on stdout)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,report,onnx,mlflow]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/boostray train

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=12

bench: $(STAMP)
	$(BIN)/python bench/bench_training.py all --json-out bench/results/training.json

clean:
	rm -rf $(VENV) .pytest_cache
