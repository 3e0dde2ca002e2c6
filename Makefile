# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python
# The CPU wheel on machines without a GPU; installed only when torch is missing, so an existing
# (CUDA) torch is never replaced and a CPU machine never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install "setuptools>=64" wheel
	$(PYTHON) -m pip install -e ".[test,study]" --no-build-isolation

run: install
	$(PYTHON) -m fastmbconv

test: install
	$(PYTHON) -m pytest
