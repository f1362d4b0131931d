import pytest

from pipelines.config import ConfigError, RunConfig, load_config


def test_defaults_are_the_documented_production_choices():
    cfg = RunConfig()
    assert cfg.mode == "pairwise"
    assert cfg.judge.sampling.temperature == 0.2
    assert cfg.judge.sampling.top_p == 0.95
    assert cfg.judge.sampling.max_tokens == 4096
    assert cfg.judge.swap_order and cfg.judge.samples == 1
    assert cfg.judge.engine.resolved_family() == "omni"
    assert cfg.max_error_fraction == 0.05


def test_blocks_default_to_one_judge_batch():
    # Ray Data hands a replica whole blocks: a block of two judge batches runs them one after the
    # other in one task (feeding bench, 4 replicas: slot occupancy 0.37 with 64-row blocks against 32-row batches).
    assert RunConfig().decode_batch_size == RunConfig().judge.batch_size == 32
    assert load_config(overrides=["judge.batch_size=8"]).decode_batch_size == 8
    assert load_config(overrides=["judge.batch_size=8", "decode_batch_size=4"]).decode_batch_size == 4


def test_structured_output_defaults_on_for_cpu_only():
    assert load_config(overrides=["judge.engine.device=cpu"]).judge.structured()
    assert not load_config(overrides=["judge.engine.device=cuda"]).judge.structured()
    assert load_config(overrides=["judge.engine.device=cuda", "judge.structured_output=true"]).judge.structured()


def test_overrides_are_typed_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("judge:\n  replicas: 2\n")
    cfg = load_config(path, ["judge.replicas=4", "filter.min_margin=2.5", "input.paths=[a.parquet, b.parquet]"])
    assert cfg.judge.replicas == 4
    assert cfg.filter.min_margin == 2.5
    assert cfg.input.paths == ["a.parquet", "b.parquet"]


@pytest.mark.parametrize(
    "override, field",
    [
        ("judge.replicas=0", "judge.replicas"),
        ("judge.engine.gpu_memory_utilization=1.5", "judge.engine.gpu_memory_utilization"),
        ("mode=best_of_n", "mode"),
        ("judge.replicaz=2", "judge.replicaz"),
        ("media.image_min_pixels=999999999", "media"),
        ("input.columns={prompt: question}", "input.columns"),
        ("object_store_budget_mib=16", "object_store_budget_mib"),
        ("object_store_budget_mib=all", "object_store_budget_mib"),
    ],
)
def test_invalid_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert field in str(info.value)


def test_vl_family_never_reserves_audio():
    cfg = load_config(overrides=["judge.engine.model=jongwooko/Flex-VL-7B"])
    assert cfg.judge.engine.resolved_family() == "vl"
    assert "audio" not in cfg.judge.engine.limit_mm_per_prompt


def test_preset_mapping_with_user_override():
    cfg = load_config(overrides=["input.preset=vl_rewardbench", "input.columns={question: prompt}"])
    mapping = cfg.input.column_mapping()
    assert mapping["responses"] == "response"
    assert mapping["question"] == "prompt"


def test_shipped_configs_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml")):
        load_config(path)


def test_every_mode_has_a_gpu_config_and_runs_from_the_demo_config():
    from jobs.demo import DEMO_CONFIG, GPU_CONFIGS
    from stages.formats.registry import FORMATS

    assert set(GPU_CONFIGS) == set(FORMATS)
    for mode, name in GPU_CONFIGS.items():
        cfg = load_config(DEMO_CONFIG.parent / name)
        assert cfg.mode == mode and cfg.judge.engine.device == "cuda"
        demo = load_config(DEMO_CONFIG, [f"mode={mode}"])  # the other modes' settings in it are harmless
        assert demo.mode == mode and demo.judge.engine.device == "cpu"
