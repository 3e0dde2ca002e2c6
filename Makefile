# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python
# The CPU wheel on machines without a GPU; installed only when torch is missing, so an existing
# (CUDA) torch is never replaced and a CPU machine never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test bench bench-gpu
GPU ?= $(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_.-')
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install "setuptools>=64" wheel
	$(PYTHON) -m pip install -e ".[test,study]" --no-build-isolation

run: install
	$(PYTHON) -m fastmbconv.study

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) -m pytest benchmarks

# On a GPU machine: raw pytest-benchmark JSON and the target summary under benchmarks/results/<gpu>/.
bench-gpu: install
	mkdir -p benchmarks/results/$(GPU)
	FASTMBCONV_BENCH_OUT=benchmarks/results/$(GPU) $(PYTHON) -m pytest benchmarks \
		--benchmark-json=benchmarks/results/$(GPU)/pytest-benchmark.json
