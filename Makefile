# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python
# pip arguments for torch, used only when torch is missing or older than TORCH_FLOOR (an existing
# torch at or past it, CUDA or not, is never replaced). Without a GPU (no `nvidia-smi -L`): the
# CPU-only wheel from PyTorch's CPU index, so a CPU machine never pulls a multi-GB CUDA build;
# with one: PyPI's Linux wheel, which is built with CUDA. Choose another build with e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
else
TORCH_SPEC ?= torch==$(TORCH_VERSION)+cpu --extra-index-url $(TORCH_CPU_INDEX)
endif

.PHONY: install run test test-fast bench bench-gpu
GPU ?= $(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_.-')
# pyproject's torch floor. An older torch is replaced here, from TORCH_SPEC, so that pip's
# upgrade of it below never pulls PyPI's CUDA build onto a machine without a GPU. TorchVersion
# compares as PEP 440 does: 2.9.0.dev or 2.9.0rc1 is older than 2.9, 2.9.0+cpu is not.
TORCH_FLOOR ?= 2.9
TORCH_AT_FLOOR = $(PYTHON) -c "import sys, torch; sys.exit(torch.__version__ < '$(TORCH_FLOOR)')"
install:
	$(TORCH_AT_FLOOR) 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	@$(TORCH_AT_FLOOR) || { echo "make install: torch is older than $(TORCH_FLOOR) after 'pip install $(TORCH_SPEC)'; pin a newer one in TORCH_SPEC" >&2; exit 1; }
	$(PYTHON) -m pip install "setuptools>=77" wheel
	$(PYTHON) -m pip install -e ".[test,study]" --no-build-isolation

run: install
	$(PYTHON) -m fastmbconv.study

# tests/ on two processes (most tests interpret Triton kernels on one core each; a file stays on
# one process, so tests sharing a folder never race), then the benchmarks (timed: one process).
test: install
	$(PYTHON) -m pytest -n 2 --dist loadfile tests
	$(PYTHON) -m pytest benchmarks

# A quick pass after `make install` (under a minute on 2 cores): the pure-torch tests, without
# interpreted Triton kernels, child processes or slow tests.
test-fast:
	$(PYTHON) -m pytest -q -n 2 -m "not slow and not subprocess and not interpreter" tests

bench: install
	$(PYTHON) -m pytest benchmarks

# On a GPU machine: raw pytest-benchmark JSON and the target summary under benchmarks/results/<gpu>/.
bench-gpu: install
	mkdir -p benchmarks/results/$(GPU)
	FASTMBCONV_BENCH_OUT=benchmarks/results/$(GPU) $(PYTHON) -m pytest benchmarks \
		--benchmark-json=benchmarks/results/$(GPU)/pytest-benchmark.json

# The expand + depthwise plan table (fastmbconv/fused/expand_dw_plan.json), re-modelled after a
# kernel change (static sm_90 report, no GPU): each model and dtype it covers, compiled with the
# installed triton and then with each release of PLAN_TRITON_ALSO (3.6.0: the GPU machines';
# 3.7.1: what PyPI's CUDA build of torch 2.13 installs, as make install does on a GPU machine;
# 3.8.0: torch 2.14's),
# each from a side venv that shares this Python's packages (made once, with the network, under
# build/). A machine whose release the table lacks takes the newest release's choices.
PLAN_TRITON_ALSO ?= 3.6.0 3.7.1 3.8.0
PLAN_SPECS ?= b0:fp16 b0:bf16 b0:fp32 b1:fp16 b1:fp32 b2:fp16 b2:fp32 b3:fp16 b3:fp32 b4:fp16 b4:fp32 \
	b5:fp16 b5:fp32 b6:fp16 b6:fp32 b7:fp16 b7:fp32
.PHONY: plan-table
plan-table:
	for v in $(PLAN_TRITON_ALSO); do venv=build/venv-triton-$$v; test -x $$venv/bin/python || { \
		$(PYTHON) -m venv --system-site-packages $$venv && \
		$$venv/bin/python -m pip install --no-deps "triton==$$v"; } || exit 1; done
	for py in $(PYTHON) $(PLAN_TRITON_ALSO:%=build/venv-triton-%/bin/python); do for spec in $(PLAN_SPECS); do \
		$$py -m fastmbconv.kernel_report --model $${spec%%:*} --dtype $${spec##*:} --batch 256 --plan-table \
		|| exit 1; done; done

# GPU check stages (issue 9; benchmarks/results/README.md): one command per stage turns a short,
# offline GPU loan into at most 8 files (each < 16 MiB) under OUT, within BUDGET_S (default 540 s).
# STAGE=first is the one command of a 15-minute loan: quick tests, warm-up, headline benchmarks.
#   make gpu-check STAGE=first|verify|speed|profile|all OUT=<dir> [DRY=1]
#                  [CACHE_FROM=<gpu-cache.tar.gz>] [BUDGET_S=540] [COMMIT=<sha>] [STUDY=1]
# DRY=1 runs the same pipeline on a CPU (Triton interpreter, tiny shapes, ncu/compute-sanitizer
# printed instead of run). Never touches the network. Interpreter: python3 (the GPU image's
# torch is there), else python.
GPU_CHECK_PYTHON ?= $(shell command -v python3 >/dev/null 2>&1 && echo python3 || echo python)
.PHONY: gpu-check
gpu-check:
	@test -n "$(STAGE)" && test -n "$(OUT)" || { echo "usage: make gpu-check STAGE=first|verify|speed|profile|all OUT=<dir> [DRY=1] [CACHE_FROM=<archive>] [BUDGET_S=540]" >&2; exit 2; }
	$(GPU_CHECK_PYTHON) tools/gpu_check.py --stage "$(STAGE)" --out "$(OUT)" \
		$(if $(filter 1 yes true,$(DRY)),--dry) $(if $(CACHE_FROM),--cache-from "$(CACHE_FROM)") \
		$(if $(BUDGET_S),--budget-s "$(BUDGET_S)") $(if $(COMMIT),--commit "$(COMMIT)") $(if $(filter 1,$(STUDY)),--study)
