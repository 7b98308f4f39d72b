"""benchmarks/gpu_check.py, the prepared GPU check, as a CPU smoke test (--device cpu --small)."""

from __future__ import annotations

import re

import pytest
from conftest import load_benchmark

RATIO = re.compile(r"^(SmolLM2-135M|GPT-2|Llama-3.2-1B): (head|changed) features / forward: \d+\.\d\dx$", re.M)


def test_the_throughput_part_runs_on_a_cpu_with_small_configs(capsys, one_torch_thread):
    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.main(["--device", "cpu", "--small", "--skip-cell"]) == 0
    lines = RATIO.findall(capsys.readouterr().out)
    assert sorted(lines) == sorted((model, kind) for model in gpu_check.REAL_CONFIGS for kind in ("head", "changed"))


def test_the_real_configs_have_the_parameters_the_estimate_assumes():
    """The configs written in the script are the models the estimate's table names (meta device: no memory)."""
    from transformers import GPT2Config, LlamaConfig

    from lm_eval_approx.models.size import KNOWN_PARAMETERS, config_parameters

    gpu_check = load_benchmark("gpu_check")
    for name, (family, values) in gpu_check.REAL_CONFIGS.items():
        config = (GPT2Config if family == "gpt2" else LlamaConfig)(**values)
        assert config_parameters(config) == KNOWN_PARAMETERS[gpu_check.HUB_IDS[name]], name


def test_asking_for_cuda_without_one_exits_with_a_clear_message(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert load_benchmark("gpu_check").main(["--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_one_tiny_cell_runs_end_to_end_on_a_cpu(capsys, monkeypatch, tmp_path, one_torch_thread):
    """Parts (b) and (c) on a generated mirror: ~2 min on two shared cores (lm-eval's import, the expert,
    one cell; then four strategies' stages twice), in bfloat16 as on a GPU."""
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(tmp_path / "no-mirror"))
    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.main(["--device", "cpu", "--small", "--models", "GPT-2", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "one tiny leaderboard cell on cpu: exit 0" in out and "stage seconds: labels" in out
    assert "load_model from lm_eval_approx.features.build: cpu torch.bfloat16" in out
    for strategy in gpu_check.STAGE_STRATEGIES:
        assert re.search(rf"^{strategy} cpu float32 / cpu bfloat16: \d+\.\d\dx", out, re.M), strategy
        assert re.search(rf"^{strategy}: labels agree on ", out, re.M), strategy
    for stage in ("pipeline", "features.generation", "features.pooled", "data.similarity"):
        assert f"load_model from lm_eval_approx.{stage}: cpu torch.bfloat16\n" in out, stage
    assert "NOTE" not in out
