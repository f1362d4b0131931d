"""What every benchmark shares: Ray set-up, configs, generated input shards, timing and memory.

Nothing here measures anything by itself; each benchmark module (engine_efficiency, feeding,
decode, scale) composes these helpers and returns a plain dict for results.json.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from bench.paths import ROOT, checkout_pythonpath
from jobs import demo_media as media
from jobs.demo import DEMO_CONFIG, QUESTIONS, SCHEMA, demo_rows
from jobs.runtime import RAY_SYSTEM_CONFIG, embedded_ray_cpus
from pipelines.config import RunConfig, load_config

KINDS = ("image", "audio", "video", "image+audio")


# --------------------------------------------------------------------------- Ray and config


def run_module(module: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
    """`python -m module args` in a fresh process importing this checkout, its output in `log`;
    raises, naming the log, when it fails."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": checkout_pythonpath()}
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"python -m {module} failed (exit {code}); see {log}")


@contextmanager
def ray_session(num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[float]:
    """A fresh embedded Ray whose workers import this checkout and start as the job's do
    (`worker_env()`), with the logical CPUs the job's embedded Ray gets unless `num_cpus` says
    otherwise; yields the seconds ray.init took.

    num_gpus declares GPUs whether or not the machine has them: the simulated engine's judge actor
    then asks for one, as in production, and Ray lays the plan out as it would on a GPU node.
    """
    import ray

    from pipelines.adapter import worker_env

    started = time.perf_counter()
    ray.init(
        num_cpus=num_cpus or embedded_ray_cpus(),
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {**worker_env(), "PYTHONPATH": checkout_pythonpath()}},
        _system_config=dict(RAY_SYSTEM_CONFIG),
    )
    init_s = time.perf_counter() - started
    import ray.data  # noqa: F401 - its logging set-up runs at import; quieten it after that

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield init_s
    finally:
        ray.shutdown()


def bench_config(
    input_dir: Path,
    output_dir: Path,
    overrides: Sequence[str] = (),
    *,
    demo: bool = True,
    device: str = "cpu",
) -> RunConfig:
    """The demo config (or the built-in defaults) on bench inputs; `overrides` are --set strings.

    device "cuda" with the simulated engine: the judge actor asks for a GPU as in production (see
    `ray_session(num_gpus=...)`), so Ray does not fuse the decode tasks into it as it does with a
    CPU judge of the same num_cpus.
    """
    base = [f"judge.engine.device={device}", "max_error_fraction=1.0", "output.overwrite=true"]
    return load_config(
        DEMO_CONFIG if demo else None,
        [*base, *overrides],
        **{"input.paths": [str(input_dir)], "output.path": str(output_dir)},
    )


def parse_variants(texts: list[str]) -> dict[str, list[str]]:
    """`--variant "NAME:key=value;key=value"` -> {NAME: [key=value, ...]}."""
    variants = {}
    for text in texts:
        name, _, sets = text.partition(":")
        items = [item.strip() for item in sets.split(";") if item.strip()]
        unknown = [item for item in items if item.startswith("bench.")
                   and not item.startswith(("bench.env.", "bench.ctx."))]
        if unknown:
            raise ValueError(f"variant {name!r}: unknown bench setting {unknown[0]!r} "
                             "(bench.env.NAME=VALUE or bench.ctx.ATTR=VALUE)")
        variants[name.strip()] = items
    return variants


def config_sets(sets: Sequence[str]) -> list[str]:
    """The --set style overrides of a variant, without its bench.* settings."""
    return [item for item in sets if not item.startswith("bench.")]


@contextmanager
def bench_settings(sets: Sequence[str]) -> Iterator[None]:
    """Apply a variant's bench-only settings around one run, and undo them after:
    `bench.env.NAME=VALUE` (an environment variable the driver reads while planning, e.g.
    RAY_DATA_PARQUET_BIN_PACKING_BYTES), `bench.ctx.ATTR=VALUE` (a Ray Data DataContext field,
    VALUE read as YAML)."""
    import yaml
    from ray.data import DataContext

    context, saved_env, saved_ctx = DataContext.get_current(), {}, {}
    for item in sets:
        if not item.startswith("bench."):
            continue
        key, _, value = item.partition("=")
        if key.startswith("bench.env."):
            name = key.removeprefix("bench.env.")
            saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        elif key.startswith("bench.ctx."):
            attr = key.removeprefix("bench.ctx.")
            saved_ctx[attr] = getattr(context, attr)
            setattr(context, attr, yaml.safe_load(value))
    try:
        yield
    finally:
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        for attr, old in saved_ctx.items():
            setattr(context, attr, old)


def gpus_for(cfg: RunConfig) -> int:
    return cfg.judge.replicas * cfg.judge.tensor_parallel_size


# --------------------------------------------------------------------------- input shards

# Media sizes. "typical": what web-scraped preference data carries (kept small enough to generate
# fast): 1024x768 JPEG, 10 s stereo FLAC at 44.1 kHz, 8 s 480x360 MP4 at 24 fps. "small": the
# demo's sizes, what the tiny CPU model is benchmarked with.
PROFILES = {
    "typical": {"image": (1024, 768), "audio_s": 10.0, "audio_rate": 44_100, "audio_channels": 2},
    "small": {"image": (112, 64), "audio_s": 2.0, "audio_rate": 22_050, "audio_channels": 1},
}


def image_bytes(profile: str, seed: int) -> bytes:
    width, height = PROFILES[profile]["image"]
    buffer = io.BytesIO()
    media.image(width, height, seed=seed).save(buffer, format="JPEG" if profile == "typical" else "PNG", quality=90)
    return buffer.getvalue()


def audio_bytes(profile: str, seed: int) -> bytes:
    import soundfile

    p = PROFILES[profile]
    samples = media.tone(p["audio_s"], p["audio_rate"], p["audio_channels"], frequency=220.0 + seed % 600)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, p["audio_rate"], format="FLAC" if profile == "typical" else "WAV",
                    subtype="PCM_16")
    return buffer.getvalue()


@functools.cache
def video_bytes(profile: str) -> bytes:
    return media.mp4(8.0, 24, 480, 360) if profile == "typical" else media.mp4(2.0, 4, 64, 48)


@functools.cache
def _shared(profile: str, modality: str) -> bytes:
    return image_bytes(profile, 0) if modality == "image" else audio_bytes(profile, 0)


def media_rows(count: int, kinds: Sequence[str], profile: str = "typical", distinct: bool = False) -> list[dict[str, Any]]:
    """`count` candidate rows cycling through `kinds` ("image", "audio", "video", "image+audio").

    distinct: every row gets its own image and audio (vLLM caches processed media by content, so
    a benchmark of the engine must not repeat them); otherwise rows share one file per modality.
    Videos are always shared (encoding one takes a while).
    """
    rows = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        question, good, bad = QUESTIONS[index % 3]
        row: dict[str, Any] = {"id": f"bench-{index:06d}", "question": question, "response_a": good,
                               "response_b": bad, "image": None, "audio": None, "video": None, "kind": kind}
        for modality in kind.split("+"):
            if modality == "video":
                data = video_bytes(profile)
            elif distinct:
                data = image_bytes(profile, index) if modality == "image" else audio_bytes(profile, index)
            else:
                data = _shared(profile, modality)
            row[modality] = {"bytes": data, "path": None}
        rows.append(row)
    return rows


def write_shards(directory: Path, rows: list[dict[str, Any]], rows_per_shard: int = 64) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    for shard, start in enumerate(range(0, len(rows), rows_per_shard)):
        table = pa.Table.from_pylist(rows[start : start + rows_per_shard], schema=SCHEMA)
        pq.write_table(table, directory / f"part-{shard:05d}.parquet")
    return directory


def tiled_demo_rows(count: int, base: int = 64) -> list[dict[str, Any]]:
    """The demo's mixed rows (text, image, audio, video, image+audio, a few broken ones), repeated
    with fresh ids: the scale benchmark's input, as cheap to make at 100x as at 1x."""
    template = demo_rows(min(base, count))
    return [{**template[i % len(template)], "id": f"scale-{i:07d}"} for i in range(count)]


# --------------------------------------------------------------------------- timing and load


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, timeout_s: float) -> dict[str, float]:
    """Wait (up to timeout_s) for the 1-minute load average to drop to max_load; report what it was."""
    started = time.time()
    first = load_average()
    while load_average() > max_load and time.time() - started < timeout_s:
        time.sleep(5)
    return {"load_at_start": round(first, 2), "load_when_started": round(load_average(), 2),
            "waited_s": round(time.time() - started, 1)}


# --------------------------------------------------------------------------- memory


def _smaps_rollup(pid: int) -> dict[str, int]:
    """A process's memory totals from /proc/PID/smaps_rollup, in bytes (Rss, Pss, Pss_Shmem, ...)."""
    totals = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            fields = rest.split()
            if len(fields) == 2 and fields[1] == "kB":
                totals[name] = int(fields[0]) * 1024
    return totals


class MemorySampler:
    """Samples the RSS of this process (the driver) and of all its descendants (Ray's raylet, GCS
    and worker processes of an embedded Ray) every `interval` seconds, keeping the peaks.

    RSS counts shared pages (the object store's shared memory) once per process mapping them:
    a sum over processes grows with how many workers have touched the store, not with what is
    held. So beside it: `peak_total_pss` (proportional set size, shared pages split) and
    `peak_footprint`, what the machine really gives the run: every process's proportional set
    outside shared memory (PSS less Pss_Shmem, /proc/PID/smaps_rollup) plus the shared memory in
    /dev/shm (where Ray's object store lives) counted once, over what /dev/shm held when sampling
    began. (Private pages, USS, would count an object-store page that only one process has touched
    twice: as that process's and in /dev/shm.)
    """

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._me = psutil.Process()
        self.interval = interval
        self.peak = {"driver_rss": 0, "workers_rss": 0, "total_rss": 0, "total_pss": 0, "footprint": 0, "shm": 0}
        self.peak_processes = 0  # Ray processes (raylet, GCS, workers) alive at once, at most
        self.at_peak: dict[str, dict[str, float]] = {}
        self.footprint_at_peak: dict[str, dict[str, float]] = {}
        self.samples = 0
        # (seconds since start, total RSS bytes, footprint bytes)
        self.timeline: list[tuple[float, int, int]] = []
        self._shm_before = _shm_used()
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def _sample(self) -> None:
        import psutil

        driver = workers = pss = unshared = 0
        processes = [self._me, *self._me.children(recursive=True)]
        self.peak_processes = max(self.peak_processes, len(processes) - 1)
        by_name: dict[str, list[int]] = {}
        unshared_by_name: dict[str, list[int]] = {}
        for process in processes:
            try:
                rollup = _smaps_rollup(process.pid)  # one read per process: RSS, PSS and its shared part
                own = rollup.get("Pss", 0) - rollup.get("Pss_Shmem", 0)
                if process.pid == self._me.pid:
                    driver = rollup.get("Rss", 0)
                    unshared_by_name.setdefault("driver", []).append(own)
                else:
                    label = _process_label(process)
                    workers += rollup.get("Rss", 0)
                    by_name.setdefault(label, []).append(rollup.get("Rss", 0))
                    unshared_by_name.setdefault(label, []).append(own)
                pss += rollup.get("Pss", 0)
                unshared += own
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        shm = max(0, _shm_used() - self._shm_before)
        if driver + workers > self.peak["total_rss"]:  # what the peak was made of
            self.at_peak = {name: {"processes": kind["processes"], "rss_mib": kind["mib"]}
                            for name, kind in _mib_by_name(by_name).items()}
        if unshared + shm > self.peak["footprint"]:
            self.footprint_at_peak = {"object store (/dev/shm)": {"processes": 0, "mib": round(shm / 2**20, 1)}}
            self.footprint_at_peak.update(_mib_by_name(unshared_by_name))
        for key, value in (("driver_rss", driver), ("workers_rss", workers), ("total_rss", driver + workers),
                           ("total_pss", pss), ("footprint", unshared + shm), ("shm", shm)):
            self.peak[key] = max(self.peak[key], value)
        self.samples += 1
        self.timeline.append((time.time() - self._started, driver + workers, unshared + shm))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def halves_peak_ratio(self, measure: str = "rss") -> float:
        """Peak of `measure` (total "rss" or "footprint") in the second half of the sampled time / in
        the first half: about 1 when memory plateaus while rows stream through, above 1 when it
        keeps growing with rows seen."""
        column = {"rss": 1, "footprint": 2}[measure]
        end = self.timeline[-1][0]
        first = max(sample[column] for sample in self.timeline if sample[0] <= end / 2)
        second = max(sample[column] for sample in self.timeline if sample[0] > end / 2)
        return second / first

    def timeline_mib(self, points: int = 40) -> list[tuple[float, float, float]]:
        """The timeline thinned to about `points` samples: (s, total RSS MiB, footprint MiB)."""
        step = max(1, len(self.timeline) // points)
        return [(round(t, 1), round(rss / 2**20), round(footprint / 2**20))
                for t, rss, footprint in self.timeline[::step]]

    def peaks_mib(self) -> dict[str, float]:
        peaks = {f"peak_{key}_mib": round(value / 2**20, 1) for key, value in self.peak.items()}
        return {**peaks, "peak_processes": self.peak_processes, "rss_at_peak_by_process": self.at_peak,
                "footprint_at_peak_by_process": self.footprint_at_peak}


def _mib_by_name(bytes_by_name: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """{process kind: [bytes per process]} as {kind: {processes, mib}}, largest first."""
    return {name: {"processes": len(values), "mib": round(sum(values) / 2**20, 1)}
            for name, values in sorted(bytes_by_name.items(), key=lambda kv: -sum(kv[1]))}


def _shm_used() -> int:
    """Bytes in use on /dev/shm, where Ray's object store keeps its shared memory (0 without it)."""
    try:
        return shutil.disk_usage("/dev/shm").used
    except OSError:
        return 0


def _process_label(process: Any) -> str:
    """A Ray process's kind: its title (ray::IDLE, ray::MapWorker(...)) or executable name."""
    title = process.name()
    if title.startswith("ray::"):
        return title.split(".")[0][:60]
    cmdline = process.cmdline()
    script = next((Path(part).name for part in cmdline[1:3] if part.endswith(".py")), None)
    return script or title
