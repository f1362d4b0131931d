"""The benchmark harness runs end to end on tiny inputs and writes its results (no timing checks)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scale
from bench.engines import MeteredEngine
from bench.feeding import MIXES, ideal_replica, latency_for, mean_tokens, served_seconds, sizing
from stages.engines.api import JudgeRequest
from stages.engines.simulated import LatencyModel, SimulatedEngine
from stages.formats.pairwise import PairwiseFormat

ROOT = Path(__file__).resolve().parents[2]


def run_bench(out: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# flexcurate benchmarks")
    return json.loads((out / "results.json").read_text())


def test_simulated_replica_speed_and_sizing_arithmetic():
    latency = latency_for(rows_per_s=10, concurrency=64)
    # 64 slots, 2 requests a row: each request takes 3.2 s on average.
    assert latency.seconds_per_token * mean_tokens() == pytest.approx(3.2)
    table = sizing({"image": 0.01, "audio": 0.02, "video": 0.04}, ray_per_core_ratio=1.0, gpu_rows_per_s=7,
                   utilisation=1.0)["table"]
    assert [row["mix"] for row in table] == list(MIXES)
    assert table[0]["decode_cpus_per_replica"] == pytest.approx(0.07)  # 7 rows/s x 10 ms
    assert table[3]["decode_ms_per_row"] == pytest.approx((10 + 20 + 40 + 30) / 4)
    assert scale._fit([{"rows": 1, "wall_s": 3.0}, {"rows": 10, "wall_s": 12.0}, {"rows": 100, "wall_s": 102.0}]) == \
        pytest.approx((2.0, 1.0))


def test_the_perfectly_fed_replica_replays_the_measured_runs_own_requests(tmp_path):
    latency = LatencyModel(seconds_per_token=0.0002, median_tokens=100, sigma=1.0)
    engine = MeteredEngine(SimulatedEngine(PairwiseFormat().simulated_verdict, latency=latency, concurrency=4),
                           tmp_path / "engine.json", startup_s=0.0)
    futures = [engine.submit(JudgeRequest(str(i), "prompt", seed=i)) for i in range(12)]
    tokens = [future.result().output_tokens for future in futures]
    engine.shutdown()
    stats = json.loads((tmp_path / "engine.json").read_text())
    assert len(set(tokens)) > 1  # lengths differ, so completions came back out of submission order
    assert stats["request_output_tokens"] == tokens
    assert served_seconds(stats, latency) == [latency.seconds_for(t) for t in tokens]
    # Two slots, the first free one taking the next request in submission order.
    assert ideal_replica([3.0, 1.0, 1.0, 1.0], 2) == {"window_s": 3.0, "slot_occupancy": 1.0}
    assert ideal_replica([1.0, 1.0, 1.0, 3.0], 2) == {"window_s": 4.0, "slot_occupancy": 0.75}


def test_a_mistyped_bench_setting_is_refused_before_anything_runs(tmp_path, capsys):
    from bench.__main__ import main

    assert main(["--tiny", "--out", str(tmp_path), "--variant", "x:bench.prerender=true"]) == 2
    assert "unknown bench setting 'bench.prerender=true'" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_a_benchmark_process_that_fails_names_its_log(tmp_path):
    from bench.common import run_module

    log = tmp_path / "point.log"
    with pytest.raises(RuntimeError, match=re.escape(f"python -m bench.scale failed (exit 1); see {log}")):
        run_module("bench.scale", ["--point"], log)
    assert "usage: python -m bench.scale --point ROWS WORKDIR OVERRIDES_JSON" in log.read_text()


@pytest.mark.e2e
def test_harness_without_the_real_engine(tmp_path):
    results = run_bench(tmp_path, "--only", "decode,feeding,scale,relabel,resume")
    for key in ("engine_busy_fraction", "decode_ratio", "memory_growth", "relabel_rows_per_s",
                "resume_seconds_vs_fresh", "resume_peak_vs_fresh"):
        assert isinstance(results[key], float) and key in results["targets"]
    feeding = results["feeding"]
    for key in ("feeding.vs_perfectly_fed", "feeding.slot_occupancy"):
        assert results["targets"][key]["value"] == feeding[key.split(".")[1]] > 0
    # Every verdict-length spread with one replica and with four, each run judging every row.
    assert {(c["sigma"], c["replicas"]) for c in feeding["cases"].values()} == {(1.0, 1), (1.0, 4), (1.5, 1), (1.5, 4)}
    for case in feeding["cases"].values():
        [run] = case["runs"]
        assert run["requests"] == 2 * run["rows"] and run["errors"] == 0
        assert run["settings"]["replicas"] == case["replicas"]
    assert results["resume_2m_ids_seconds"] > 0 and results["resume_2m_ids_peak_mib"] > 0
    assert results["resume"]["committed_ids"] > 0 and results["resume"]["remaining_rows"] > 0
    assert set(results["decode"]["stages"]) == {"image", "audio", "video"}
    assert [p["factor"] for p in results["scale"]["points"]] == [1, 10, 100]
    assert results["memory_growth"] == results["scale"]["points"][-1]["second_half_vs_first_half"]
    # Beside the summed RSS, what the machine gives the run: private pages + the object store once.
    assert results["scale"]["footprint_growth"] > 0
    for point in results["scale"]["points"]:
        assert 0 < point["peak_footprint_mib"] <= point["peak_total_rss_mib"] + point["peak_shm_mib"]
        assert point["memory_timeline_mib"][-1][0] > 0
    assert len(results["sizing"]["table"]) == len(MIXES)
    assert results["relabel"]["counts_after"]["kept"] < results["relabel"]["counts_before"]["kept"]
    assert "engine_efficiency" not in results


@pytest.mark.engine
@pytest.mark.e2e
def test_engine_benchmark_against_raw_vllm(tmp_path):
    pytest.importorskip("vllm")
    results = run_bench(tmp_path, "--only", "engine")
    engine = results["engine"]
    assert results["engine_efficiency"] == engine["engine_efficiency"] > 0
    raw, pipeline = engine["runs"]["raw"][str(engine["engine_threads"])][0], engine["runs"]["pipeline"]["default"][0]
    assert raw["requests"] == pipeline["requests"] == 2 * engine["rows"]  # both answer orders, both sides
    assert raw["torch_threads"] == engine["engine_threads"]
    # The peer ran the same requests, and the ratio is the pipeline's rows/s over its own.
    [peer] = engine["ray_data_llm"]["runs"]
    assert peer["requests"] == pipeline["requests"]
    assert results["vs_ray_data_llm"] == pytest.approx(pipeline["rows_per_s"] / peer["rows_per_s"])
    assert 0 < results["prefix_cache_hit_rate"] <= 1 and 0 < engine["prefix_cache_hit_rate_samples_3"] <= 1
    assert engine["prefix_cache_samples_3"]["requests"] == 6 * engine["prefix_cache_samples_3"]["rows"]
