"""Engines a judge replica runs: the interface (api.py), vLLM (vllm_engine.py, with its CPU-build
shim torchvision_compat.py), a model-free simulation (simulated.py), the model families' media
placeholders (families.py), their config (config.py) and the factory a replica builds one with
(factory.py)."""
