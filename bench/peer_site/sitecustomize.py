"""Run at the start of every Python process of the engine benchmark's peer (Ray Data LLM), whose
runtime env puts this folder on PYTHONPATH: inside a Ray actor vLLM always spawns its engine core
in a fresh interpreter, which imports torchvision (through transformers) before any code of ours
could run; beside the CPU build of torch that import needs the compatibility shim first. A no-op
where torchvision loads by itself (GPU installs)."""
from stages.engines.torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()
