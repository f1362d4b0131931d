"""Render a replica's requests in processes of their own: each prompt tokenised and its media put
through the model's processor, as vLLM's frontend does, so that the engine's thread only adds
ready inputs and steps the model.

Why: on the engine's thread rendering took 43% of its time (py-spy on the judge actor, CPU
engine, image+audio rows: the tokeniser, Qwen's image processor, Whisper's log-mel features) and
the model waited meanwhile. A thread beside it gains nothing (the GIL: 11.4-13.0 s against
12.0-12.2 s for the same 511 requests). vLLM makes the same split when its API server and engine
core are processes apart; here the core stays in the replica's process (no polling process
beside it, see `EngineConfig.core_process`) and only the rendering moves out.

Each render process builds vLLM's renderer for the engine's own arguments (tokeniser, processor,
model config; no weights) and renders with `skip_mm_cache`: a processor-only cache of its own
serves a row's later requests (its other answer orders, its samples) the media processed for the
first, and every input it returns carries its processed media, so the engine's core needs nothing
mirrored. The requests of one `JudgeRequest.group` (a row's) go to the same process.

Transport: one thread per process sends the requests queued for it, as they come (pickled; the
decoded media are numpy arrays), and one receives the rendered inputs. Their tensors travel as
their own bytes: a processor's output tensor can be a view into a larger buffer, which pickle
would copy whole (2 MB a request instead of 140 KB, measured).

A request that cannot be rendered (media the processor refuses, placeholders not matching the
media, more items than `limit_mm_per_prompt`) fails alone with `RenderError`; a render process
that dies fails everything it held with `EngineDead`, and the pool takes nothing more.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from stages.engines.api import EngineDead, JudgeRequest
from stages.engines.families import ModelFamily

logger = logging.getLogger(__name__)

# A render process's processor cache: it only has to hold a row's media from its first request to
# its last (both orders x samples arrive together), not the engine's whole working set.
RENDER_CACHE_GB = 1.0
START_TIMEOUT_S = 600.0  # a cold import of vLLM and the model's processor on a loaded node


class RenderError(ValueError):
    """One request could not be rendered; its type and message are the original exception's."""


@dataclass(frozen=True)
class RenderSpec:
    """What a render process needs to build the engine's renderer."""

    engine_args: dict[str, Any]  # vllm EngineArgs keywords, as the engine is built with
    family: ModelFamily
    cpu: bool  # the CPU build: its torchvision shim before vLLM's imports


# --------------------------------------------------------------------------- tensors as bytes


def _tensor_from_bytes(raw: bytes, dtype: str, shape: tuple[int, ...]) -> Any:
    import torch

    torch_dtype = getattr(torch, dtype)
    if not raw:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch_dtype).reshape(shape)


class _CompactPickler(pickle.Pickler):
    """Pickles a torch tensor as the bytes of its own elements (dtype and shape kept)."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")  # none loaded: nothing here is a tensor
        if torch is not None and isinstance(obj, torch.Tensor):
            tensor = obj.detach().contiguous()
            raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            return _tensor_from_bytes, (raw, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
        return NotImplemented


def dumps(value: Any) -> bytes:
    """Pickle `value` with torch tensors as their own bytes (see the module docstring)."""
    buffer = io.BytesIO()
    _CompactPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the render process


def _build_renderer(spec: RenderSpec) -> tuple[Any, Any]:
    if spec.cpu:
        from stages.engines.vllm_engine import prepare_cpu_engine

        prepare_cpu_engine(1)
    from vllm import EngineArgs
    from vllm.config import StructuredOutputsConfig
    from vllm.renderers import renderer_from_config

    args = dict(spec.engine_args)
    if isinstance(args.get("structured_outputs_config"), dict):
        args["structured_outputs_config"] = StructuredOutputsConfig(**args["structured_outputs_config"])
    # Rendering does not depend on tensor parallelism (one process renders for all of a replica's
    # GPUs); its processor cache only holds a row's media (RENDER_CACHE_GB).
    args.update(tensor_parallel_size=1, mm_processor_cache_gb=RENDER_CACHE_GB)
    config = EngineArgs(**args).create_engine_config()
    return config, renderer_from_config(config)


def _render_main(conn: Connection) -> None:
    """A render process: build the renderer, then render each batch received until the socket ends."""
    try:
        spec: RenderSpec = pickle.loads(conn.recv_bytes())
        config, renderer = _build_renderer(spec)
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        from stages.engines.vllm_engine import to_vllm_prompt

        tok_params = renderer.default_cmpl_tok_params
    except BaseException as exc:  # noqa: BLE001 - reported to the pool, which says why
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            batch: list[tuple[int, JudgeRequest]] = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the replica closed the pipe, or died
            return
        for key, request in batch:  # each input goes back as soon as it is made: the engine waits for it
            try:
                prompt = parse_model_prompt(config.model_config, to_vllm_prompt(request, spec.family))
                (engine_input,) = renderer.render_cmpl([prompt], tok_params, skip_mm_cache=True)
                result = (key, engine_input, None)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the others
                result = (key, None, (type(exc).__name__, str(exc)))
            conn.send_bytes(dumps(result))


# --------------------------------------------------------------------------- the replica's side


class _RenderProcess:
    """One render process, the thread that sends it requests and the one that reads its inputs.

    A fresh interpreter (`python -m stages.engines.render FD`), not a multiprocessing child: spawn
    would run the replica's main module again in it, and fork would copy an engine's threads."""

    def __init__(self, spec: RenderSpec, index: int) -> None:
        self.index = index
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path)),
               "OMP_NUM_THREADS": "1"}  # vLLM's processor reads it; the pool is the parallelism
        with theirs:
            self.process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(pickle.dumps(spec))
        self.outbox: queue.SimpleQueue[tuple[int, JudgeRequest] | None] = queue.SimpleQueue()
        self.pending: dict[int, Future[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.dead: str | None = None
        self.threads: list[threading.Thread] = []

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"render process {self.index} did not start within {timeout_s:.0f} s")
        status, detail = pickle.loads(self.conn.recv_bytes())
        if status != "ready":
            raise RuntimeError(f"render process {self.index} failed to start: {detail}")
        self.threads = [threading.Thread(target=target, name=f"render-{self.index}-{name}", daemon=True)
                        for target, name in ((self._send, "send"), (self._receive, "receive"))]
        for thread in self.threads:
            thread.start()

    def submit(self, key: int, request: JudgeRequest, future: Future[dict[str, Any]]) -> None:
        with self.lock:
            if self.dead is not None:
                future.set_exception(EngineDead(self.dead))
                return
            self.pending[key] = future
        self.outbox.put((key, request))

    def _send(self) -> None:
        while True:
            item = self.outbox.get()
            batch = []
            while item is not None:
                batch.append(item)
                try:
                    item = self.outbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self.conn.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
                except (OSError, ValueError):
                    return  # closed: the receiver fails what was pending
            if item is None:
                return

    def _receive(self) -> None:
        while True:
            try:
                key, engine_input, error = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - unreadable: nothing it holds can be trusted to return
                logger.exception("render process %d sent what cannot be read", self.index)
                self.process.kill()
                break
            with self.lock:
                future = self.pending.pop(key, None)
            if future is None:
                continue
            if error is None:
                future.set_result(engine_input)
            else:
                future.set_exception(RenderError(f"{error[0]}: {error[1]}"))
        self._fail_pending(f"render process {self.index} exited (code {self.process.wait()})")

    def _fail_pending(self, reason: str) -> None:
        with self.lock:
            self.dead = self.dead or reason
            pending, self.pending = list(self.pending.values()), {}
        for future in pending:
            if not future.done():
                future.set_exception(EngineDead(self.dead))

    def close(self) -> None:
        with self.lock:
            self.dead = self.dead or "the render pool was shut down"
        self.outbox.put(None)
        # Shut the socket down rather than close it under the threads reading and writing it: both
        # ends see it end (the process exits, the receiver stops), and the descriptor is closed last,
        # when nothing can use its number any more.
        try:
            with socket.socket(fileno=os.dup(self.conn.fileno())) as end:
                end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self.threads:
            thread.join(timeout=10)
        self.conn.close()
        self._fail_pending(self.dead)


class RenderPool:
    """`processes` render processes for one replica's engine; `submit` returns the future of a
    request's engine input (what vLLM's `Renderer.render_cmpl` makes, for `LLMEngine.add_request`).

    The processes start when the pool is made; `wait_ready` blocks until each has built its renderer
    (so a replica can load its model meanwhile) and raises, naming the cause, if one cannot.
    """

    def __init__(self, spec: RenderSpec, processes: int) -> None:
        if processes < 1:
            raise ValueError("a render pool needs at least one process")
        self._processes = [_RenderProcess(spec, index) for index in range(processes)]
        self._keys = itertools.count()
        self._next = 0
        self._lock = threading.Lock()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            for process in self._processes:
                process.wait_ready(timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def submit(self, request: JudgeRequest) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            key = next(self._keys)
            if request.group is not None:
                process = self._processes[hash(request.group) % len(self._processes)]
            else:
                process = self._processes[self._next]
                self._next = (self._next + 1) % len(self._processes)
        process.submit(key, request, future)
        return future

    def shutdown(self) -> None:
        for process in self._processes:
            process.close()


if __name__ == "__main__":  # a render process, started by _RenderProcess with its end of the socket
    # Through the module's own name, so that what it pickles names stages.engines.render, not __main__.
    from stages.engines import render

    render._render_main(Connection(int(sys.argv[1])))
