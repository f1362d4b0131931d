"""Run at the start of every Python process that has this folder on its PYTHONPATH: the engine-core
process vLLM spawns for a CPU engine whose core runs apart (`judge.engine.core_process`, and Ray
Data LLM's engine in the benchmark). A spawned interpreter imports torchvision (through
transformers) before any code of ours could run; beside the CPU build of torch that import needs
the compatibility shim first. A no-op where torchvision loads by itself (GPU installs)."""
from stages.engines.torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()
