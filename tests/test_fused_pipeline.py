"""``fused_labels`` in the pipeline: θf's pseudo-labels read in the forward of its own feature store
(``features/fused.py``), against the pipeline's two passes (``pseudo_label``, then the features of
the labels given).

The task is a carrier task under the tiny tokenizer (" Sports" and " Business" one token each,
" Sci/Tech" three: ``test_fused_forward.py`` ``ONE_LONG``), looked up by name through every module
that loads a task. Tolerances are those of ``test_fused_forward.py``: the carrier row is longer than
a one-token label's encoding, so the padded batches differ and the float32 losses and norms move by
rounding only (FLOAT32_ROUNDING relative), the stored float16 features by float16's rounding (F16).
θf's loss of the two-pass labels stage is read from packed rows (``models/packing.py``), the fused
one from the carrier row: the same sums in float32 over other padding, so the same bound holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import save_tiny_model
from test_fused_forward import F16, FLOAT32_ROUNDING, ONE_LONG, TEXTS

import lm_eval_approx.approx_config as approx_config
import lm_eval_approx.features.build as build
import lm_eval_approx.features.config as feature_config
import lm_eval_approx.features.pseudo_labels as pseudo_labels
from lm_eval_approx import pipeline
from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.cache.stages import stage_key
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.build import open_feature_stores
from lm_eval_approx.features.store import FeatureStore
from lm_eval_approx.models.loading import model_fingerprint
from lm_eval_approx.tasks.kinds import task_key

CARRIER_TASK = ONE_LONG.name


@pytest.fixture(scope="module")
def pair(tiny_gpt2, tmp_path_factory):
    """θ0 (the tiny GPT-2) and θf (another seed of it, so its pseudo-labels take several classes)."""
    return tiny_gpt2, save_tiny_model(tmp_path_factory.mktemp("fused-pipeline-tuned"), "gpt2", seed=1)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fused-pipeline-corpus") / "docs.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def carrier_task(monkeypatch):
    """The carrier task under its name wherever a task is loaded by name (the config, the feature
    config's check, the extractor); other names load as they always do."""
    for module in (approx_config, build, feature_config):
        original = module.get_task_spec
        monkeypatch.setattr(module, "get_task_spec",
                            lambda name, *a, _original=original, **k: ONE_LONG if name == CARRIER_TASK
                            else _original(name, *a, **k))


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """A cache of its own per call, so every run starts from nothing."""
    count = iter(range(100))

    def use() -> None:
        monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / f"cache{next(count)}"))

    use()
    return use


@pytest.fixture
def passes(monkeypatch, pair):
    """θf's loads and ``pseudo_label`` passes of the pipeline and the extractor."""
    seen = {"theta_f": 0, "pseudo_label": 0}
    for module in (pipeline, build):
        load = module.load_model

        def counting_load(name, *args, _load=load, **kwargs):
            seen["theta_f"] += name == pair[1]
            return _load(name, *args, **kwargs)

        monkeypatch.setattr(module, "load_model", counting_load)
    for module in (pseudo_labels, build):
        label = module.pseudo_label

        def counting_label(*args, _label=label, **kwargs):
            seen["pseudo_label"] += 1
            return _label(*args, **kwargs)

        monkeypatch.setattr(module, "pseudo_label", counting_label)
    return seen


def _config(pair, corpus_file, **changes) -> ApproxConfig:
    fields = dict(base=pair[0], finetuned=pair[1], task=CARRIER_TASK, corpus=corpus_file, strategy="select", k=3,
                  dim=256, extract_batch_size=3, extract_max_length=48)
    return ApproxConfig(**{**fields, **changes})


def _stage(selected, name):
    return next(s for s in selected.stages if s.name == name)


def _labels(selected) -> tuple[np.ndarray, np.ndarray]:
    folder = _stage(selected, pipeline.LABEL_STAGE).path
    return np.load(folder / pipeline.LABELS_FILE), np.load(folder / pipeline.LOSS_FILE)


def _stores(selected):
    return [store for s in selected.stages if s.name == pipeline.FEATURE_STAGE
            for store in open_feature_stores(s.path / pipeline.FEATURE_DIR)]


def _same_store(a: FeatureStore, b: FeatureStore) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_allclose(a.loss, b.loss, rtol=FLOAT32_ROUNDING)
    np.testing.assert_allclose(a.sqnorm, b.sqnorm, rtol=FLOAT32_ROUNDING)
    np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), **F16)
    assert a.meta == b.meta


@pytest.mark.parametrize("params, checkpoints, strategy", [("head", 1, "select"), ("changed", 1, "select"),
                                                           ("changed", 2, "select_checkpoints")])
def test_the_fused_pipeline_equals_the_two_passes(params, checkpoints, strategy, pair, corpus_file, carrier_task,
                                                  fresh_cache, one_torch_thread):
    changes = dict(params=params, checkpoints=checkpoints, strategy=strategy)
    two = pipeline.run_selection(_config(pair, corpus_file, **changes))
    fresh_cache()
    fused = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True, **changes))
    (labels, loss), (two_labels, two_loss) = _labels(fused), _labels(two)
    assert len(set(two_labels.tolist())) > 1, "the carrier's own label and others"
    np.testing.assert_array_equal(labels, two_labels)
    assert loss.dtype == two_loss.dtype == np.float32
    np.testing.assert_allclose(loss, two_loss, rtol=FLOAT32_ROUNDING)
    fused_stores, two_stores = _stores(fused), _stores(two)
    assert [s.alpha for s in fused_stores] == [s.alpha for s in two_stores] == [j / checkpoints for j in
                                                                                range(1, checkpoints + 1)]
    for a, b in zip(fused_stores, two_stores):
        _same_store(a, b)
    np.testing.assert_array_equal(fused_stores[-1].labels, labels)
    np.testing.assert_array_equal(fused_stores[-1].loss, loss)
    assert [row.id for row in fused.rows] == [row.id for row in two.rows]


def test_theta_f_runs_once_and_the_feature_stage_is_then_cached(pair, corpus_file, carrier_task, fresh_cache,
                                                               passes, one_torch_thread):
    fused = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    assert passes == {"theta_f": 1, "pseudo_label": 0}, "one θf load, its feature forward reads the labels"
    assert not _stage(fused, pipeline.LABEL_STAGE).cached and _stage(fused, pipeline.FEATURE_STAGE).cached
    again = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    assert all(s.cached for s in again.stages) and passes["theta_f"] == 1
    fresh_cache()
    pipeline.run_selection(_config(pair, corpus_file))
    assert passes == {"theta_f": 3, "pseudo_label": 1}, "the two passes: θf for the labels, θf for the features"


def _two_pass_keys(config: ApproxConfig, selected) -> tuple[str, str]:
    """The labels' and θf's store's keys as the pipeline made them before ``fused_labels`` existed."""
    models = {"base": model_fingerprint(config.base), "finetuned": model_fingerprint(config.finetuned)}
    labels = stage_key(pipeline.LABEL_STAGE, {"finetuned": models["finetuned"], "task": task_key(selected.spec),
                                              "corpus": selected.corpus.fingerprint(),
                                              "max_length": config.extract_max_length})
    features = stage_key(pipeline.FEATURE_STAGE, {
        **models, "labels": labels, "params": config.params, "dim": config.dim, "projection": config.projection,
        "projection_seed": config.projection_seed, "checkpoints": 1, "max_length": config.extract_max_length})
    return labels, features


def test_fused_off_keeps_every_key_and_fused_on_records_it(pair, corpus_file, carrier_task, fresh_cache,
                                                           one_torch_thread):
    config = _config(pair, corpus_file)
    two = pipeline.run_selection(config)
    old = _two_pass_keys(config, two)
    assert (_stage(two, pipeline.LABEL_STAGE).key, _stage(two, pipeline.FEATURE_STAGE).key) == old
    fused = pipeline.run_selection(dataclasses.replace(config, fused_labels=True))
    labels, features = _stage(fused, pipeline.LABEL_STAGE), _stage(fused, pipeline.FEATURE_STAGE)
    assert labels.key not in old and features.key not in old
    assert labels.key == stage_key(pipeline.LABEL_STAGE, {
        "finetuned": model_fingerprint(pair[1]), "task": CARRIER_TASK, "corpus": fused.corpus.fingerprint(),
        "max_length": 48, "fused": {"params": "head"}})


def test_a_task_without_carriers_keeps_the_two_passes(pair, corpus_file, fresh_cache, passes, one_torch_thread):
    """approx_agnews under the tiny tokenizer: " World" and " Sci/Tech" both take several tokens."""
    config = _config(pair, corpus_file, task="approx_agnews")
    fused = pipeline.run_selection(dataclasses.replace(config, fused_labels=True))
    assert passes == {"theta_f": 2, "pseudo_label": 1}
    assert _two_pass_keys(config, fused) == (_stage(fused, pipeline.LABEL_STAGE).key,
                                             _stage(fused, pipeline.FEATURE_STAGE).key)
    assert all(s.cached for s in pipeline.run_selection(config).stages), "the very stages of fused_labels off"


def test_the_labels_stage_is_the_same_whichever_strategy_ran_first(pair, corpus_file, carrier_task, fresh_cache,
                                                                  passes, one_torch_thread):
    random_first = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True, strategy="random"))
    assert passes["theta_f"] == 1 and passes["pseudo_label"] == 0
    after = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    assert passes["theta_f"] == 1, "the select cell reuses the labels and the store the random cell made"
    assert _stage(after, pipeline.LABEL_STAGE).cached and _stage(after, pipeline.FEATURE_STAGE).cached
    fresh_cache()
    select_first = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    assert _stage(random_first, pipeline.LABEL_STAGE).key == _stage(select_first, pipeline.LABEL_STAGE).key
    for a, b in zip(_labels(random_first), _labels(select_first)):
        np.testing.assert_array_equal(a, b)
    assert [row.id for row in after.rows] == [row.id for row in select_first.rows]


def test_a_killed_fused_labels_stage_resumes_to_the_same_labels_and_store(pair, corpus_file, carrier_task,
                                                                          fresh_cache, monkeypatch, one_torch_thread):
    """Killed after θf's store wrote its first batch: the rerun resumes the store inside the labels
    stage and ends with what an uninterrupted run makes."""
    reference = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    fresh_cache()
    real_write, calls = FeatureStore.write_rows, []

    def dying_write(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_rows", dying_write)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    monkeypatch.setattr(FeatureStore, "write_rows", real_write)
    resumed = pipeline.run_selection(_config(pair, corpus_file, fused_labels=True))
    assert [s.key for s in resumed.stages] == [s.key for s in reference.stages]
    (labels, loss), (want_labels, want_loss) = _labels(resumed), _labels(reference)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(loss, want_loss, rtol=FLOAT32_ROUNDING)  # the resumed rows batch differently
    _same_store(_stores(resumed)[0], _stores(reference)[0])


def test_fused_labels_is_a_checked_bool_that_travels_like_the_other_fields(pair):
    from lm_eval_approx.harness.approx_model import split_model_args
    from lm_eval_approx.leaderboard.config import config_from_dict
    from lm_eval_approx.leaderboard.runner import approx_model_args

    assert ApproxConfig(base="b", finetuned="f").fused_labels is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="fused_labels=.* is not accepted: true or false"):
            ApproxConfig(base="b", finetuned="f", fused_labels=bad)
    grid = config_from_dict({"base": pair[0], "expert": {"adapter": "x"}, "strategies": ["select"], "retraining": {},
                             "approx": {"fused_labels": True}})
    cell = next(c for c in grid.cells() if c.kind == "approx")
    args = approx_model_args(grid, cell, pair[1])
    assert args["fused_labels"] is True
    config, _, _ = split_model_args({**args, "base": pair[0]})
    assert config.fused_labels is True
