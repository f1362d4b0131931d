"""The dataset presets end to end: shards in openbmb/RLAIF-V-Dataset's, MMInstruction/
VL-RewardBench's and TIGER-Lab/GenAI-Bench's layouts, written with `datasets` as the hub holds them,
run with `input.preset`.

The judge is the simulated engine (seeded verdicts): under test is the column mapping through every
stage to the outputs, which does not depend on the model.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode
from tests import synthetic_media as sm

pytestmark = pytest.mark.e2e
ROWS = 8


def run_preset(root: Path, preset: str, *overrides: str) -> Path:
    output = root / "output"
    code = main([
        "run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(output),
        "--set", f"input.preset={preset}", "--set", "judge.engine.backend=simulated", "--set", "filter.min_margin=0",
        *(arg for override in overrides for arg in ("--set", override)),
    ])
    assert code == ExitCode.OK
    return output


def landed(output: Path) -> dict[str, dict]:
    return {r["id"]: r for name in ("kept", "dropped", "errors") for r in pq.read_table(output / name).to_pylist()}


@pytest.fixture(scope="module")
def rlaif_v(tmp_path_factory, ray_session):
    from datasets import Dataset, Features, Image, Value

    root = tmp_path_factory.mktemp("rlaif_v")
    rows = [
        {"ds_name": "RLAIF-V", "image": {"bytes": sm.png(48 + 4 * i, 40, seed=i), "path": None},
         "question": f"What is in picture {i}?", "chosen": f"A gradient, variant {i}.", "rejected": f"A dog {i}.",
         "origin_dataset": "OK-VQA", "origin_split": '{"model": "OmniLMM-12B"}', "idx": f"OK-VQA_{i:05d}",
         "image_path": f"OK-VQA/train/{i:05d}.jpg"}
        for i in range(ROWS)
    ]
    features = Features({"ds_name": Value("string"), "image": Image(), "question": Value("string"),
                         "chosen": Value("string"), "rejected": Value("string"), "origin_dataset": Value("string"),
                         "origin_split": Value("string"), "idx": Value("string"), "image_path": Value("string")})
    (root / "input").mkdir()
    Dataset.from_list(rows, features=features).to_parquet(str(root / "input" / "train-00000-of-00001.parquet"))
    return rows, run_preset(root, "rlaif_v")


def test_rlaif_v_rows_are_judged_with_chosen_and_rejected_as_the_two_answers(rlaif_v):
    rows, output = rlaif_v
    by_idx = {r["idx"]: r for r in landed(output).values()}  # no id column: ids are content hashes
    assert set(by_idx) == {r["idx"] for r in rows}
    for given in rows:
        row = by_idx[given["idx"]]
        assert (row["question"], row["response_a"], row["response_b"]) == (given["question"], given["chosen"], given["rejected"])
        assert (row["ds_name"], row["origin_split"], row["image_path"]) == (given["ds_name"], given["origin_split"], given["image_path"])
        assert row["image"]["bytes"] == given["image"]["bytes"]
    kept = pq.read_table(output / "kept").to_pylist()
    assert kept and all({r["chosen"], r["rejected"]} == {r["response_a"], r["response_b"]} for r in kept)


def test_rlaif_v_preferences_load_with_images(rlaif_v):
    from datasets import load_dataset

    _, output = rlaif_v
    pairs = load_dataset("parquet", data_files=str(output / "preferences" / "*.parquet"), split="train")
    assert pairs.num_rows == len(pq.read_table(output / "kept"))
    assert all(len(images) == 1 and images[0].size[0] > 0 for images in pairs["images"])


@pytest.fixture(scope="module")
def vl_rewardbench(tmp_path_factory, ray_session):
    from datasets import Dataset, Features, Image, List, Value

    root = tmp_path_factory.mktemp("vl_rewardbench")
    rows = [
        {"id": f"RLAIF-V-{i}", "query": f"Describe image {i}.", "image": {"bytes": sm.png(40, 40 + 4 * i, seed=i), "path": None},
         "response": [f"A blue gradient {i}.", f"A red square {i}."], "human_ranking": [0, 1] if i % 2 else [1, 0],
         "models": ["model-a", "model-b"]}
        for i in range(ROWS)
    ]
    features = Features({"id": Value("string"), "query": Value("string"), "image": Image(),
                         "response": List(Value("string")), "human_ranking": List(Value("int64")),
                         "models": List(Value("string"))})
    (root / "input").mkdir()
    Dataset.from_list(rows, features=features).to_parquet(str(root / "input" / "test-00000-of-00001.parquet"))
    return rows, run_preset(root, "vl_rewardbench")


def test_vl_rewardbench_rows_are_judged_with_both_listed_responses(vl_rewardbench):
    rows, output = vl_rewardbench
    by_id = landed(output)
    assert set(by_id) == {r["id"] for r in rows}
    for given in rows:
        row = by_id[given["id"]]
        assert (row["question"], [row["response_a"], row["response_b"]]) == (given["query"], given["response"])
        assert row["human_ranking"] == given["human_ranking"] and row["models"] == given["models"]


GENAI_VOTES = ("leftvote", "rightvote", "tievote", "bothbad_vote")


def image(seed: int) -> dict:
    return {"bytes": sm.png(48, 40, seed=seed), "path": None}


@pytest.fixture(scope="module")
def genai_bench(tmp_path_factory, ray_session):
    """GenAI-Bench's image_generation and image_edition configs, each its own run (mode choice)."""
    from datasets import Dataset, Features, Image, Value

    runs = {}
    for preset in ("genai_bench", "genai_bench_edition"):
        root = tmp_path_factory.mktemp(preset)
        if preset == "genai_bench":
            rows = [{"prompt": f"a fox number {i}", "left_model": "m1", "left_image": image(i), "right_model": "m2",
                     "right_image": image(100 + i), "vote_type": GENAI_VOTES[i % 4]} for i in range(ROWS)]
            features = {"prompt": Value("string"), "left_model": Value("string"), "left_image": Image(),
                        "right_model": Value("string"), "right_image": Image(), "vote_type": Value("string")}
        else:
            rows = [{"source_prompt": "a fox", "target_prompt": "a red fox", "instruct_prompt": f"make fox {i} red",
                     "source_image": image(200 + i), "left_model": "m1", "left_output_image": image(i),
                     "right_model": "m2", "right_output_image": image(100 + i), "vote_type": GENAI_VOTES[i % 4]}
                    for i in range(ROWS)]
            features = {"source_prompt": Value("string"), "target_prompt": Value("string"),
                        "instruct_prompt": Value("string"), "source_image": Image(), "left_model": Value("string"),
                        "left_output_image": Image(), "right_model": Value("string"), "right_output_image": Image(),
                        "vote_type": Value("string")}
        (root / "input").mkdir()
        Dataset.from_list(rows, features=Features(features)).to_parquet(str(root / "input" / "test_v1-00000.parquet"))
        runs[preset] = (rows, run_preset(root, preset, "mode=choice"), root)
    return runs


@pytest.mark.parametrize("preset", ["genai_bench", "genai_bench_edition"])
def test_genai_bench_rows_are_judged_as_choices_and_scored_against_vote_type(genai_bench, preset):
    import json

    rows, output, root = genai_bench[preset]
    judged = list(landed(output).values())
    assert len(judged) == ROWS and not pq.read_table(output / "errors").num_rows
    left = "left_image" if preset == "genai_bench" else "left_output_image"
    for row in judged:
        given = next(r for r in rows if r[left]["bytes"] == row["left_image"]["bytes"])
        assert row["vote_type"] == given["vote_type"] and row["left_model"] == given["left_model"]
        if preset == "genai_bench":
            assert row["question"] == given["prompt"]
        else:
            assert row["instruct_prompt"] == given["instruct_prompt"]
            assert row["source_image"]["bytes"] == given["source_image"]["bytes"]
    assert main(["evaluate", "--from", str(output), "--output", str(root / "eval")]) == ExitCode.OK
    scores = json.loads((root / "eval" / "eval.json").read_text())
    assert scores["labels"]["column"] == "vote_type" and scores["labelled_in_run"] == ROWS
    assert scores["human_ties"] == ROWS // 2 and scores["accuracy_with_ties"] is not None
