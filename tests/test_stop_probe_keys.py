"""The one stop-probe builder (``training/stop_signals.py`` ``probes_for_selection``, ``monitor_inputs``)
keeps the cache keys the running grids use: the values pinned below were computed by the pipeline's
own builder before the pipeline and the ``train`` command shared one (θ0 and θf fingerprinted as
``fp-llama``, so the keys do not depend on where the test model lies)."""

from __future__ import annotations

import json
import types

import pytest

from _specs import AGNEWS
from lm_eval_approx.cache.paths import cache_dir
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.stop_signals import TASK_TEXTS, TEACHER_STAGE, monitor_inputs

# signal → (probe key, monitor_teacher stage key, probe_start stage key)
PINNED = {"teacher_agreement": ("be76fa9c0c74692a", "6f67e4ce88c7fe32", "4320bbcde7a2eae9"),
          "teacher_kl": ("04b4078204c051a2", "594a9a107b8675dc", "84d53f307273f6b8")}


@pytest.fixture
def fixed_fingerprints(monkeypatch, tmp_path):
    from lm_eval_approx.models import loading

    monkeypatch.setattr(loading, "model_fingerprint", lambda name: "fp-llama")
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))


def _stages(name: str) -> set[str]:
    folder = cache_dir() / "stages" / name
    return {path.name for path in folder.iterdir() if not path.name.endswith(".lock")} if folder.is_dir() else set()


@pytest.mark.parametrize("stop_on", sorted(PINNED))
def test_the_pipeline_keeps_its_probe_and_stage_keys(tiny_llama, fixed_fingerprints, stop_on):
    from lm_eval_approx import pipeline
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.training.history import TrainingHistory
    from lm_eval_approx.training.probes import START_STAGE, record_probes

    texts = [f"The pool passage number {i} about {w}" for i, w in enumerate(["rain", "goals", "banks", "chips"] * 5)]
    ids = [f"pool:{i}" for i in range(len(texts))]
    corpus = types.SimpleNamespace(texts=texts, ids=ids, fingerprint=lambda: "pool-fp")
    rows = [SelectedExample(id=ids[i], text=texts[i], label=i % 4) for i in (0, 3, 7)]
    config = types.SimpleNamespace(base=tiny_llama, finetuned=tiny_llama, add_bos_token=None, extract_batch_size=4,
                                   extract_max_length=64, device="cpu", extract_dtype="float32")
    recipe = TrainingRecipe(stop_on=stop_on, monitor_size=6, seed=1)
    [probe] = pipeline._probes_from_config(config, AGNEWS, corpus, rows, recipe)
    record_probes(TrainingHistory(), [probe], load_model(tiny_llama), load_tokenizer(tiny_llama),
                  start=("fp-base", "no"))
    assert (probe.key, _stages(TEACHER_STAGE), _stages(START_STAGE)) == (
        PINNED[stop_on][0], {PINNED[stop_on][1]}, {PINNED[stop_on][2]})


def test_the_monitor_of_a_training_key_has_one_encoding(fixed_fingerprints):
    """The pipeline's training stage keys ``monitor_inputs`` as they were; the ``train`` command keys
    their JSON, the string it always had."""
    pool = TrainingRecipe(stop_on="teacher_agreement")
    assert monitor_inputs(pool, "pool-fp", "theta-f") == {"corpus": "pool-fp", "finetuned": "fp-llama"}
    task = TrainingRecipe(stop_on="task_agreement")
    assert monitor_inputs(task, "pool-fp", "theta-f") == {"corpus": TASK_TEXTS, "finetuned": "fp-llama"}
    assert json.dumps(monitor_inputs(task, TASK_TEXTS, "theta-f"), sort_keys=True) == \
        '{"corpus": "task:train", "finetuned": "fp-llama"}'
    loss = TrainingRecipe(stop_on="task_loss")
    assert monitor_inputs(loss, "pool-fp", None) == {"corpus": TASK_TEXTS}
    sampled = TrainingRecipe(stop_on="task_loss", monitor_source="base")
    assert monitor_inputs(sampled, "pool-fp", "theta-0") == {"corpus": "sampled:base", "finetuned": "fp-llama"}
