"""The retraining rule's stop probes follow the configured device and dtype, as every other model
load of the pipeline does: θf's teacher distribution and the samplers of the weights condition's
monitor texts load on ``ApproxConfig.device`` in ``extract_dtype`` (the ``train`` command: on
``--device`` in ``--dtype``); float32 keeps every key it had (the pinned keys are in
tests/test_stop_probe_keys.py), another dtype is keyed; a bfloat16 θf's teacher distribution is
close to the float32 one's.

CPU only: the placement is checked by spying on ``load_model`` (the arguments it got and the
parameters it returned); bfloat16 on the CPU is the dtype that differs from the default."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from conftest import save_tiny_model

from _specs import AGNEWS
from lm_eval_approx import pipeline
from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.cache.paths import cache_dir
from lm_eval_approx.cache.stages import stage_key
from lm_eval_approx.data.selection_file import SelectedExample, read_selection, selection_hash
from lm_eval_approx.models import loading
from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
from lm_eval_approx.tasks.kinds import task_key
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training import stop_signals
from lm_eval_approx.training.probes import choice_log_distribution, kl_divergence
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.stop_signals import TASK_TEXTS, TEACHER_STAGE, monitor_inputs

TEXTS = ["The team won the final match of the season and the fans celebrated in the streets all night.",
         "Stocks fell as the central bank raised interest rates again, the third rise this year.",
         "Leaders met in Geneva to discuss the peace treaty.",
         "A new chip doubles the speed of scientific computing in labs across the country."]
# bfloat16 θf against float32 θf on TEXTS (two tiny random Llamas, seeds 0 and 1, measured): the
# choice probabilities differ by at most 2.9e-4 and KL(fp32 ‖ bf16) is at most 7.2e-8; the bounds
# leave a factor of 10.
PROBABILITY_ATOL = 3e-3
KL_BOUND = 1e-6
PROBE_MODULES = ("lm_eval_approx.training.stop_signals", "lm_eval_approx.features.generation")
# The weights condition's rule: θf samples the monitor texts and measures the signal on them.
SAMPLED_RULE = {"stop_on": "task_agreement", "monitor_source": "finetuned", "monitor_size": 3}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """θ0 and θf: two tiny random Llamas with one tokenizer (θf another seed, so they differ)."""
    return (save_tiny_model(tmp_path_factory.mktemp("probe-base"), "llama", seed=0),
            save_tiny_model(tmp_path_factory.mktemp("probe-finetuned"), "llama", seed=1))


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def loads(monkeypatch):
    """Every ``load_model`` call made by the stop probes' modules (which import it where they call
    it): (calling module, device and dtype asked for, device and dtype of the parameters returned)."""
    original, seen = loading.load_model, []

    def spy(name, dtype="float32", device="cpu", allow_pickle=None):
        model = original(name, dtype, device, allow_pickle)
        first = next(model.parameters())
        caller = sys._getframe(1).f_globals["__name__"]
        if caller in PROBE_MODULES:
            seen.append((caller, device, dtype, str(first.device), first.dtype))
        return model

    monkeypatch.setattr(loading, "load_model", spy)
    return seen


def _rows(texts: list[str], picked=(0, 3, 7)) -> list[SelectedExample]:
    return [SelectedExample(id=f"pool:{i}", text=texts[i], label=i % 4) for i in picked]


def _pool():
    texts = [f"The pool passage number {i} about {w}" for i, w in enumerate(["rain", "goals", "banks", "chips"] * 4)]
    return types.SimpleNamespace(texts=texts, ids=[f"pool:{i}" for i in range(len(texts))], fingerprint=lambda: "pool-fp")


# ---- the probes' models on the configured device and dtype ---------------------------------------------------

@pytest.mark.parametrize("rule", [SAMPLED_RULE, {"stop_on": "teacher_kl", "monitor_size": 6}])
def test_the_teacher_and_the_sampler_load_on_the_device_in_the_dtype(pair, loads, own_cache, one_torch_thread, rule):
    config = ApproxConfig(base=pair[0], finetuned=pair[1], extract_batch_size=4, extract_max_length=64,
                          device="cpu", extract_dtype="bfloat16")
    corpus = _pool()
    [probe] = pipeline._probes_from_config(config, AGNEWS, corpus, _rows(corpus.texts), TrainingRecipe(**rule, seed=1))
    callers = {caller for caller, *_ in loads}
    sampled = "monitor_source" in rule
    assert callers == set(PROBE_MODULES if sampled else PROBE_MODULES[:1]), loads
    assert all(record[1:] == ("cpu", "bfloat16", "cpu", torch.bfloat16) for record in loads), loads
    assert probe.key  # the cached teacher distribution's probe


def test_the_uncached_teacher_loads_on_the_device_in_the_dtype(pair, loads, monkeypatch, own_cache, one_torch_thread):
    monkeypatch.setattr(stop_signals, "CACHE_PROBES", False)
    recipe = TrainingRecipe(stop_on="task_kl", seed=1)
    stop_signals.probes_for_texts(AGNEWS, recipe, TEXTS, base=pair[0], finetuned=pair[1], batch_size=4, max_length=64,
                                  dtype="bfloat16")
    assert loads == [(PROBE_MODULES[0], "cpu", "bfloat16", "cpu", torch.bfloat16)]


# ---- keys: float32 as they were, another dtype keyed -----------------------------------------------------------

def test_the_teacher_stage_and_probe_keys_name_a_dtype_other_than_float32(pair, own_cache, one_torch_thread):
    recipe = TrainingRecipe(stop_on="teacher_agreement", seed=1)
    settings = {"task": task_key(AGNEWS), "texts": stop_signals.texts_hash(TEXTS), "batch_size": 4, "max_length": 64,
                "add_bos_token": None, "signal": recipe.stop_on, "finetuned": model_fingerprint(pair[1])}
    keys = {}
    for dtype in ("float32", "bfloat16"):
        [probe] = stop_signals.probes_for_texts(AGNEWS, recipe, TEXTS, base=pair[0], finetuned=pair[1], batch_size=4,
                                                max_length=64, dtype=dtype)
        keys[dtype] = probe.key
    assert keys["float32"] == stage_key(stop_signals.PROBE_KEY, settings)  # the key it had before the dtype
    assert keys["bfloat16"] == stage_key(stop_signals.PROBE_KEY, {**settings, "extract_dtype": "bfloat16"})
    assert keys["bfloat16"] != keys["float32"]
    teacher = cache_dir() / "stages" / TEACHER_STAGE
    assert {path.name for path in teacher.iterdir() if not path.name.endswith(".lock")} == {
        stage_key(TEACHER_STAGE, settings), stage_key(TEACHER_STAGE, {**settings, "extract_dtype": "bfloat16"})}


def test_the_monitor_of_a_training_key_names_a_dtype_other_than_float32(monkeypatch):
    monkeypatch.setattr(loading, "model_fingerprint", lambda name: "fp-llama")
    teacher, loss = TrainingRecipe(stop_on="task_agreement"), TrainingRecipe(stop_on="task_loss")
    before = {"corpus": TASK_TEXTS, "finetuned": "fp-llama"}
    assert monitor_inputs(teacher, "pool-fp", "f") == monitor_inputs(teacher, "pool-fp", "f", "float32") == before
    assert monitor_inputs(teacher, "pool-fp", "f", "bfloat16") == {**before, "extract_dtype": "bfloat16"}
    # the task's own texts and no θf: no model of the probe's own, so no dtype either
    assert monitor_inputs(loss, "pool-fp", None, "bfloat16") == {"corpus": TASK_TEXTS}


def test_the_training_stage_keys_the_monitors_dtype_and_float32_as_before(pair, own_cache, monkeypatch,
                                                                          tmp_path, one_torch_thread):
    """``run_approximation``'s training key: float32 is the key it always had, bfloat16 another; the
    probes reach the training (which is stubbed: the key is what is checked here)."""
    from lm_eval_approx.training import loop

    corpus_file = tmp_path / "docs.txt"
    corpus_file.write_text("\n".join(f"Document {i}: the market and the team and the chip {i}" for i in range(12)),
                           encoding="utf-8")
    given = []

    def no_training(base, spec, rows, recipe, out, *, probes=(), **kwargs):
        given.append(probes)
        return out

    monkeypatch.setattr(loop, "train_adapter", no_training)
    recipe = TrainingRecipe(**SAMPLED_RULE, epochs=1, seed=1)
    for dtype in ("float32", "bfloat16"):
        config = ApproxConfig(base=pair[0], finetuned=pair[1], corpus=str(corpus_file), strategy="random", k=3,
                              extract_batch_size=4, extract_max_length=32, extract_dtype=dtype)
        result = pipeline.run_approximation(config, recipe)
        monitor = {"corpus": "sampled:finetuned", "finetuned": model_fingerprint(pair[1]),
                   **({} if dtype == "float32" else {"extract_dtype": dtype})}
        assert result.stage(pipeline.TRAINING_STAGE).key == stage_key(pipeline.TRAINING_STAGE, {
            "base": model_fingerprint(pair[0]), "task": task_key(get_task_spec(config.task)),
            "selection": selection_hash(read_selection(result.selection)), "recipe": recipe.recipe_hash(),
            "monitor": monitor})
    assert len(given) == 2 and all(len(probes) == 1 for probes in given)


# ---- the train command's --device and --dtype -----------------------------------------------------------------

@pytest.mark.parametrize("flag, value, accepted", [("--dtype", "fp16", "float32 | bfloat16 | float16"),
                                                   ("--device", "gpu", "cpu, cuda or cuda:N")])
def test_the_train_command_names_a_bad_device_or_dtype(flag, value, accepted, tmp_path, capsys):
    from lm_eval_approx.cli import main

    argv = ["train", "--base", "b", "--task", "approx_agnews", "--data", "sel.jsonl", "--out", str(tmp_path / "o"),
            flag, value]
    assert main(argv) == 2
    assert accepted in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_train_commands_probes_run_in_its_dtype_and_key_it(pair, loads, own_cache, tmp_path, monkeypatch,
                                                               one_torch_thread):
    from lm_eval_approx.cli import main
    from lm_eval_approx.data.selection_file import write_selection
    from lm_eval_approx.training import loop

    keys = []

    def keyed_only(base, spec, examples, recipe, out, *, probes=(), monitor=None, **kwargs):
        keys.append(monitor)
        raise SystemExit(0)  # the training itself is not what is checked

    monkeypatch.setattr(loop, "train_adapter", keyed_only)
    selection = write_selection(tmp_path / "sel.jsonl", _rows(_pool().texts))
    argv = ["train", "--base", pair[0], "--finetuned", pair[1], "--task", "approx_agnews", "--data", str(selection),
            "--out", str(tmp_path / "o"), "--stop-on", "task_agreement", "--monitor-source", "finetuned",
            "--monitor-size", "3", "--max-length", "64", "--no-progress"]
    for flags, dtype, placed in (([], "float32", torch.float32), (["--dtype", "bfloat16", "--device", "cpu"],
                                                                   "bfloat16", torch.bfloat16)):
        loads.clear()
        with pytest.raises(SystemExit):
            main(argv + flags)
        assert {caller for caller, *_ in loads} == set(PROBE_MODULES), loads  # the sampler and the teacher
        assert all(record[1:] == ("cpu", dtype, "cpu", placed) for record in loads), loads
    before = {"corpus": "sampled:finetuned", "finetuned": model_fingerprint(pair[1])}
    assert [json.loads(key) for key in keys] == [before, {**before, "extract_dtype": "bfloat16"}]
    assert keys[0] == json.dumps(before, sort_keys=True)  # the string the float32 key always had


# ---- a bfloat16 teacher's distribution ---------------------------------------------------------------------------

def test_a_bfloat16_teacher_distribution_is_close_to_the_float32_one(pair, one_torch_thread):
    tokenizer = load_tokenizer(pair[1])
    exact = choice_log_distribution(load_model(pair[1]), tokenizer, AGNEWS, TEXTS, 4, 64)
    low = choice_log_distribution(load_model(pair[1], "bfloat16"), tokenizer, AGNEWS, TEXTS, 4, 64)
    assert low.dtype == np.float64 and np.isfinite(low).all()
    np.testing.assert_allclose(np.exp(low).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(low), np.exp(exact), atol=PROBABILITY_ATOL)
    assert kl_divergence(exact, low) < KL_BOUND

