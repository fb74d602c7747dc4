# make run   : set up .venv (if missing) and run the README's main job (digits, cbnn, 1 Ray Train worker)
# make test  : set up .venv (if missing) and run the test suite, but for the cluster tests
# make test-cluster : the tests that start Ray instances of their own: the multi-node cluster (`ray start` head
#                      + nodes, jobs, a lost node, streamed data larger than the object store) and a Tune
#                      sweep beside a second local Ray; about 9 min, and 2 for the sweep
# make test-fast : the Ray-free tests only (under a minute)
# make bench : the benchmarks in bench/ (JSON on stdout)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast test-cluster bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,report,onnx,mlflow]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/boostray train

# the cluster tests (tests/test_cluster*.py, about 9 minutes, and a sweep beside a second local Ray, 2) are
# left to make test-cluster: with them the suite ran over CI's 20 minutes on a clean clone here
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster" --durations=12

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m cluster --durations=6

# the Ray-free tests (method, model, data, metrics, artifacts, the in-process trainer): the inner loop of development
FAST_TESTS = tests/test_boosting.py tests/test_combine.py tests/test_configs.py tests/test_console.py tests/test_data.py tests/test_diagnostics.py tests/test_engine.py \
             tests/test_ensemble.py tests/test_layers.py tests/test_methods.py tests/test_metrics.py tests/test_oip.py tests/test_train_local.py \
             tests/test_storage.py tests/test_streaming.py tests/test_imbalance.py
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray" $(FAST_TESTS)

bench: $(STAMP)
	$(BIN)/python bench/bench_training.py all --json-out bench/results/training.json

clean:
	rm -rf $(VENV) .pytest_cache
