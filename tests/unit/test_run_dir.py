"""Which attempts resume an unfinished run directory and which are refused."""
import json

import pytest

from pipelines.config import load_config
from pipelines.run_dir import RUN_IDENTITY, OutputExists, open_run_directory

SHARDS = ["/data/part-0.parquet"]


def config(tmp_path, *sets: str):
    return load_config(overrides=["judge.engine.device=cpu", *sets], **{"output.path": str(tmp_path / "run")})


def test_a_new_block_size_resumes_the_run_even_one_an_earlier_version_recorded(tmp_path):
    open_run_directory(config(tmp_path, "decode_batch_size=4"), SHARDS)
    assert open_run_directory(config(tmp_path), SHARDS).resumed_batches == 0  # no OutputExists
    identity_file = tmp_path / "run" / RUN_IDENTITY
    recorded = json.loads(identity_file.read_text())
    recorded["config"]["decode_batch_size"] = 16  # as versions before blocks of one judge batch wrote it
    identity_file.write_text(json.dumps(recorded))
    open_run_directory(config(tmp_path), SHARDS)


def test_a_run_started_under_another_object_store_budget_resumes(tmp_path):
    open_run_directory(config(tmp_path, "object_store_budget_mib=1024"), SHARDS)
    open_run_directory(config(tmp_path, "object_store_budget_mib=ray"), SHARDS)  # no OutputExists
    open_run_directory(config(tmp_path), SHARDS)


def test_a_setting_that_decides_outcomes_is_refused(tmp_path):
    open_run_directory(config(tmp_path), SHARDS)
    with pytest.raises(OutputExists, match="different config"):
        open_run_directory(config(tmp_path, "filter.min_margin=3"), SHARDS)
