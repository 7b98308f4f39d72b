"""The cost estimate scales with θ0's parameter count and with the device class (leaderboard/estimate.py)."""

from __future__ import annotations

import pytest

from lm_eval_approx.leaderboard.sources import load_config
from lm_eval_approx.models.size import KNOWN_PARAMETERS, SMOLLM2_135M_PARAMETERS, parameter_count

# Llama-3.2-1B's published config (tied embeddings): 1,235,814,400 parameters.
LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                   tie_word_embeddings=True, rope_theta=500000.0)


@pytest.fixture(scope="module")
def llama_1b_config(tmp_path_factory) -> str:
    """A folder holding only the config.json of Llama-3.2-1B: no weights, nothing downloaded."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-1b-config")
    LlamaConfig(**LLAMA_32_1B).save_pretrained(folder)
    return str(folder)


def _seconds(preset: str, *overrides: str) -> dict[str, float]:
    from lm_eval_approx.leaderboard.estimate import estimate

    return estimate(load_config(None, preset, list(overrides))).seconds


def test_a_1b_config_is_costed_its_size_over_smollm2s_per_document_time(llama_1b_config):
    """Every part but the sentence model's scales by P / P_ref on the CPU (cpu-small uses none)."""
    count = parameter_count(llama_1b_config)  # built on the meta device from config.json alone
    assert count == KNOWN_PARAMETERS["meta-llama/Llama-3.2-1B"] == 1_235_814_400
    reference = _seconds("cpu-small")
    big = _seconds("cpu-small", f"base={llama_1b_config}")
    ratio = count / SMOLLM2_135M_PARAMETERS
    assert ratio == pytest.approx(9.19, abs=0.01)
    assert all(reference[part] > 0 for part in reference)
    assert big == pytest.approx({part: secs * ratio for part, secs in reference.items()})


def test_cuda_is_cheaper_than_the_cpu_by_the_stated_throughput_ratio():
    from lm_eval_approx.leaderboard.estimate import DEVICE_CLASSES, describe

    cpu, cuda = _seconds("cpu-small"), _seconds("cpu-small", "device=cuda")
    factor = DEVICE_CLASSES["cuda"].throughput
    assert factor > 1 and cuda == pytest.approx({part: secs / factor for part, secs in cpu.items()})
    assert _seconds("cpu-small", "device=cuda:1") == pytest.approx(cuda)
    text = describe(load_config(None, "cpu-small", ["device=cuda"]))
    assert "not measured" in text and f"{factor:g}x the CPU rates" in text


def test_the_sentence_model_keeps_its_rate_whatever_theta0(llama_1b_config):
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, scaled_rates

    rates = scaled_rates(parameter_count(llama_1b_config))
    assert rates["embed_sentence"] == CPU_RATES["embed_sentence"]
    assert rates["features_head"] == pytest.approx(CPU_RATES["features_head"] * SMOLLM2_135M_PARAMETERS / 1_235_814_400)


def test_a_saved_model_is_counted_from_its_safetensors_headers(tiny_llama):
    from pathlib import Path

    from lm_eval_approx.models.loading import load_model
    from lm_eval_approx.models.size import config_count, safetensors_count

    expected = sum(p.numel() for p in load_model(tiny_llama).parameters())  # tied head once
    assert safetensors_count(Path(tiny_llama)) == expected == config_count(Path(tiny_llama))
    assert parameter_count(tiny_llama) == expected


def test_a_model_of_unknown_size_is_costed_as_smollm2_and_says_so():
    from lm_eval_approx.leaderboard.estimate import describe

    assert parameter_count("no-such-owner/no-such-model") is None  # offline, not cached
    assert _seconds("cpu-small", "base=no-such-owner/no-such-model") == pytest.approx(_seconds("cpu-small"))
    text = describe(load_config(None, "cpu-small", ["base=no-such-owner/no-such-model"]))
    assert "size not found on this machine" in text and "costed as SmolLM2-135M" in text


def test_the_gpu_preset_is_at_the_papers_sizes_and_costed_offline():
    """Llama-3.2-1B (a hub id this machine cannot download), k up to 5,000 of a 20,000+ pool, on
    cuda under bf16: validated and costed without reading a weight."""
    from lm_eval_approx.leaderboard.estimate import describe, estimate

    config = load_config(None, "gpu", [])
    assert config.base == "meta-llama/Llama-3.2-1B" and config.device == "cuda"
    assert max(config.budgets) == 5000 and config.corpus.size >= 20000
    assert config.recipe_for().mixed_precision == "bf16"
    est = estimate(config)
    assert not est.unknown and est.total > 0
    assert "1,235.8M parameters" in describe(config)
