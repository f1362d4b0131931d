# The image the KubeRay manifests run (jobs/manifests/*.yaml: REGISTRY/flexcurate:VERSION-gpu):
# Ray's GPU image for the Ray release pyproject.toml pins and the Python of the project's venv, with
# this repo at /app (the manifests' workingDir) installed with its GPU extra (vLLM on CUDA).
#   make image                                  # flexcurate:0.1.0-gpu
#   make image REGISTRY=registry.example.com/ml && docker push registry.example.com/ml/flexcurate:0.1.0-gpu
# tests/cluster/test_image.py checks that this file, the manifests, the Makefile and pyproject agree.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# `-gpu`: Ray's alias for its CUDA image; vLLM's wheels bring their own CUDA libraries, the node
# brings the driver.
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu

# FFmpeg's shared libraries: torchcodec, with which `datasets` decodes the outputs' Audio and Video
# values (PyAV, which the pipeline decodes with, bundles its own).
USER root
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /app && chown ray:users /app
USER ray
WORKDIR /app

# Dependencies first, so an edit to the code does not reinstall vLLM.
COPY --chown=ray:users pyproject.toml README.md ./
RUN pip install --no-cache-dir '.[gpu]' \
    && pip uninstall -y flexcurate
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps '.[gpu]' \
    && python -c "import jobs.cli, pipelines.curate, stages.judge"
