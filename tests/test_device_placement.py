"""Where the pipeline's models run: ``ApproxConfig.device`` and ``extract_dtype`` reach every model
load (labels, θ0 losses, features, sampled texts, pooled states, the sentence encoder), a bfloat16
model's results come back as float32 numpy close to the float32 model's, a GPU this machine lacks is
a named error before any compute, and float32 leaves every cache key as it was.

CPU only: a CUDA machine is faked by patching ``torch.cuda``; the device is checked by spying on
``load_model`` (the arguments it got, the parameters it returned)."""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np
import pytest
import torch
from conftest import save_tiny_model

from lm_eval_approx import pipeline
from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.cache.stages import stage_key
from lm_eval_approx.data import similarity
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features import generation
from lm_eval_approx.features.generation import GENERATION_STAGE, GenerationSettings, next_token_scores
from lm_eval_approx.features.losses import example_losses
from lm_eval_approx.features.pooled import pooled_hidden_states
from lm_eval_approx.leaderboard.checks import LeaderboardConfigError
from lm_eval_approx.leaderboard.config import config_from_dict
from lm_eval_approx.models import loading
from lm_eval_approx.models.devices import DeviceError, check_device, check_device_available
from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
from lm_eval_approx.tasks.kinds import task_key
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

AGNEWS = "approx_agnews"
TEXTS = ["The team won the final match of the season and the fans celebrated in the streets all night.",
         "Stocks fell as the central bank raised interest rates again, the third rise this year.",
         "Leaders met in Geneva to discuss the peace treaty.",
         "A new chip doubles the speed of scientific computing in labs across the country."]
# bfloat16 model against float32 model, worst text: the tiny Llama's losses differ by 1.1e-4
# (relative), its pooled rows by 1 − cos = 1e-5 and MiniLM's rows by 6e-5 (measured); the bounds
# leave a factor of 10 or more.
LOSS_RTOL = 1e-3
COSINE_FLOOR = 1 - 1e-3
# The feature stage computes the target θ0 − θf from a float32 pair on the CPU whatever the dtype
# (features/build.py: a bfloat16 difference of two full models rounds away small updates).
FLOAT32_TARGET = ("lm_eval_approx.features.build", "cpu", "float32")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """θ0 and θf: two tiny random Llamas with one tokenizer (θf another seed, so they differ)."""
    return (save_tiny_model(tmp_path_factory.mktemp("placement-base"), "llama", seed=0),
            save_tiny_model(tmp_path_factory.mktemp("placement-finetuned"), "llama", seed=1))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("placement-corpus") / "docs.txt"
    words = "market team chip treaty season bank rates lab peace fans".split()
    path.write_text("\n".join(f"Document {i}: " + " ".join(words[(i + j) % len(words)] for j in range(9))
                              for i in range(12)) + "\n", encoding="utf-8")
    return str(path)


# ---- names and availability ----------------------------------------------------------------------------

@pytest.mark.parametrize("good", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_the_accepted_device_names(good):
    assert check_device("device", good) == good


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:", "cpu:1", "CUDA", "", None, 0, "mps"])
def test_other_device_names_are_a_named_error_saying_what_is_accepted(bad):
    with pytest.raises(DeviceError, match="cpu, cuda or cuda:N") as caught:
        check_device("device", bad)
    assert isinstance(caught.value, ConfigError) and caught.value.field == "device"
    with pytest.raises(DeviceError):
        ApproxConfig(base="b", finetuned="f", device=bad)


def test_the_extraction_dtype_is_checked_and_float32_by_default():
    config = ApproxConfig(base="b", finetuned="f")
    assert (config.device, config.extract_dtype) == ("cpu", "float32")
    with pytest.raises(ConfigError, match="extract_dtype='fp16' is not accepted: one of float32, bfloat16, float16"):
        ApproxConfig(base="b", finetuned="f", extract_dtype="fp16")


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_a_gpu_fails_before_any_compute(monkeypatch, pair):
    _no_cuda(monkeypatch)
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        check_device_available("device", "cuda")
    assert check_device_available("device", "cpu") == "cpu"
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        load_model(pair[0], device="cuda:0")

    def no_pair_check(*args, **kwargs):
        raise AssertionError("the device is checked before the models are")

    monkeypatch.setattr(pipeline, "check_model_pair", no_pair_check)
    with pytest.raises(DeviceError, match="device='cuda'"):
        pipeline.run_selection(ApproxConfig(base=pair[0], finetuned=pair[1], device="cuda"))


def test_a_gpu_index_beyond_the_visible_ones_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device_available("device", "cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"cuda:0\.\.cuda:1 \(2 GPU"):
        check_device_available("device", "cuda:2")


# ---- the leaderboard's device ----------------------------------------------------------------------------

def _grid(**changes) -> dict:
    return {"base": "b", "expert": {"adapter": "x"}, "strategies": ["random"], **changes}


def test_a_leaderboard_device_is_checked_by_form_only_and_reaches_the_approximation(monkeypatch):
    """A driver plans cuda cells without a GPU (Ray, SLURM, --dry-run); the cell's model arguments
    carry the device to HFLM and to ApproxConfig alike."""
    from lm_eval_approx.harness.approx_model import split_model_args

    _no_cuda(monkeypatch)
    assert config_from_dict(_grid(device="cuda:1")).device == "cuda:1"
    with pytest.raises(LeaderboardConfigError, match="device"):
        config_from_dict(_grid(device="gpu"))
    with pytest.raises(LeaderboardConfigError, match="approx.device"):
        config_from_dict(_grid(approx={"device": "cpu"}))
    config, _, hf_args = split_model_args({"base": "b", "finetuned": "f", "device": "cpu",
                                           "extract_dtype": "bfloat16"})
    assert (config.device, config.extract_dtype, hf_args["device"]) == ("cpu", "bfloat16", "cpu")


def test_a_local_cuda_grid_without_a_gpu_stops_before_it_writes(monkeypatch, tmp_path, capsys):
    from lm_eval_approx.cli import main

    _no_cuda(monkeypatch)
    out = tmp_path / "o"
    assert main(["leaderboard", "--preset", "tiny", "--set", "base=/nonexistent", "--set", "device=cuda",
                 "--out", str(out)]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err and not out.exists()


# ---- keys ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [pipeline.LABEL_STAGE, pipeline.BASE_LOSS_STAGE, pipeline.FEATURE_STAGE])
def test_float32_leaves_a_model_stage_key_as_it_was_and_another_dtype_is_keyed(stage):
    """The keys of stages made before the dtype existed (float32, on any device) are the keys now."""
    before = {"finetuned": "abc", "task": AGNEWS, "corpus": "0123", "max_length": 64}
    base = {"base": "b", "finetuned": "f"}
    for config in (ApproxConfig(**base), ApproxConfig(**base, device="cuda:0")):
        assert stage_key(stage, {**before, **pipeline._extract_input(config)}) == stage_key(stage, before)
    half = {**before, **pipeline._extract_input(ApproxConfig(**base, extract_dtype="float16"))}
    assert half["extract_dtype"] == "float16" and stage_key(stage, half) != stage_key(stage, before)


def test_the_generation_key_is_unchanged_in_float32_and_names_another_dtype(pair):
    spec, settings = get_task_spec(AGNEWS), GenerationSettings(max_new_tokens=6, batch_size=4, min_words=1)
    before = {"sampler": model_fingerprint(pair[1]), "task": task_key(spec), "n": 2, "seed": 0,
              "settings": dataclasses.asdict(settings), "add_bos_token": None}
    _, fp32 = generation.generated_texts(pair[0], pair[1], spec, 2, 0, settings)
    texts, bf16 = generation.generated_texts(pair[0], pair[1], spec, 2, 0, settings, dtype="bfloat16")
    assert fp32.key == stage_key(GENERATION_STAGE, before)
    assert bf16.key == stage_key(GENERATION_STAGE, {**before, "extract_dtype": "bfloat16"}) and len(texts) == 2


# ---- every model load on the configured device and dtype ----------------------------------------------------

@pytest.fixture
def loads(monkeypatch):
    """Every ``load_model`` call of the package: (calling module, device and dtype asked for, device
    and dtype of the parameters returned); the sentence encoder's as ``similarity``."""
    importlib.import_module("lm_eval_approx.features.build")  # imports load_model by name: patched below

    original, seen = loading.load_model, []

    def spy(name, dtype="float32", device="cpu", allow_pickle=None):
        model = original(name, dtype, device, allow_pickle)
        first = next(model.parameters())
        seen.append((sys._getframe(1).f_globals["__name__"], device, dtype, str(first.device), first.dtype))
        return model

    for module in [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("lm_eval_approx")]:
        if getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", spy)
    embedder = similarity._embedder

    def embedder_spy(device="cpu", dtype="float32"):
        tokenizer, model = embedder(device, dtype)
        first = next(model.parameters())
        seen.append(("similarity", device, dtype, str(first.device), first.dtype))
        return tokenizer, model

    monkeypatch.setattr(similarity, "_embedder", embedder_spy)
    return seen


@pytest.mark.parametrize("strategy, stage", [
    ("likelihood_ratio", "lm_eval_approx.pipeline"),  # θf's labels and losses, θ0's losses
    ("select", "lm_eval_approx.features.build"),  # gradient features
    ("rds", "lm_eval_approx.features.pooled"),  # θf's samples, θ0's pooled states
    ("gen_knn", "similarity"),  # θf's samples, the sentence encoder
])
def test_each_stage_loads_its_models_on_the_device_in_the_dtype(strategy, stage, pair, corpus_file, loads,
                                                                one_torch_thread):
    config = ApproxConfig(base=pair[0], finetuned=pair[1], corpus=corpus_file, strategy=strategy, k=3, dim=64,
                          target_size=4, extract_batch_size=4, extract_max_length=32, device="cpu",
                          extract_dtype="bfloat16")
    selected = pipeline.run_selection(config)
    assert len(selected.rows) == 3
    placed = [record for record in loads if record[:3] != FLOAT32_TARGET]
    assert {caller for caller, *_ in placed} >= {stage}
    assert all(record[1:] == ("cpu", "bfloat16", "cpu", torch.bfloat16) for record in placed), loads
    labels = selected.stages[0]
    assert labels.key == stage_key(pipeline.LABEL_STAGE, {
        "finetuned": model_fingerprint(pair[1]), "task": task_key(get_task_spec(AGNEWS)),
        "corpus": selected.corpus.fingerprint(), "max_length": 32, "extract_dtype": "bfloat16"})


# ---- bfloat16 results: float32 numpy, close to the float32 model's -----------------------------------------

def _both(path):
    return load_model(path), load_model(path, dtype="bfloat16"), load_tokenizer(path)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bfloat16_losses_are_float32_and_close(pair, one_torch_thread):
    fp32, bf16, tokenizer = _both(pair[1])
    spec = get_task_spec(AGNEWS)
    exact = example_losses(fp32, tokenizer, spec, TEXTS, [0, 1, 2, 3], max_length=64)
    low = example_losses(bf16, tokenizer, spec, TEXTS, [0, 1, 2, 3], max_length=64)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    np.testing.assert_allclose(low, exact, rtol=LOSS_RTOL)


def test_bfloat16_pooled_states_are_float32_unit_rows_close_to_float32(pair, one_torch_thread):
    fp32, bf16, tokenizer = _both(pair[0])
    exact = pooled_hidden_states(fp32, tokenizer, TEXTS, batch_size=2)
    low = pooled_hidden_states(bf16, tokenizer, TEXTS, batch_size=2)
    assert low.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    assert _cosines(low, exact).min() > COSINE_FLOOR


def test_bfloat16_sentence_embeddings_are_float32_and_close(one_torch_thread):
    exact = similarity.sentence_embeddings(TEXTS)
    low = similarity.sentence_embeddings(TEXTS, dtype="bfloat16")
    assert low.dtype == np.float32 and low.shape == exact.shape
    assert _cosines(low, exact).min() > COSINE_FLOOR


def test_bfloat16_logits_are_scored_as_their_float32_upcast():
    """Bans, contrast, penalty and temperature see float32 logits: a bf16 model's next-token scores
    are exactly those of its logits upcast, so top-p draws from the same distribution."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=generator).bfloat16()
    base_logits = torch.randn(3, 50, generator=generator).bfloat16()
    generated = torch.tensor([[1, 2], [3, 3], [4, 0]])
    settings = GenerationSettings(temperature=0.7, repetition_penalty=1.3)
    for base in (None, base_logits):
        low = next_token_scores(logits, base, generated, [5, 6], settings)
        up = next_token_scores(logits.float(), None if base is None else base.float(), generated, [5, 6], settings)
        assert low.dtype == torch.float32 and torch.equal(low, up)


def test_a_bfloat16_model_samples_on_its_device(pair):
    model, tokenizer = load_model(pair[1], dtype="bfloat16"), load_tokenizer(pair[1])
    settings = GenerationSettings(max_new_tokens=8, batch_size=4, min_words=1)
    texts, tokens = generation.sample_texts(model, tokenizer, get_task_spec(AGNEWS), 3, 0, settings)
    again, _ = generation.sample_texts(model, tokenizer, get_task_spec(AGNEWS), 3, 0, settings)
    assert texts == again and len(texts) == 3 and tokens > 0
    with pytest.raises(ConfigError, match="θf's device"):
        generation.sample_texts(model, tokenizer, get_task_spec(AGNEWS), 3, 0,
                                GenerationSettings(source="contrast"), base_model=load_model(pair[0]).to("meta"))
