"""The weights condition: texts sampled from the models alone (features/generation.py), the
retraining rule that monitors them, the condition key of a leaderboard, what each row knew, and the
selection cost a cell records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features import generation
from lm_eval_approx.features.generation import (
    GenerationSettings,
    banned_token_ids,
    next_token_scores,
    prompt_prefix,
    sample_texts,
    stop_token_ids,
)
from lm_eval_approx.leaderboard.config import EXPERT, THETA0, Cell, config_from_dict
from lm_eval_approx.leaderboard.knowledge import TASK_TEXTS, TRUE_DATA, WEIGHTS, row_knowledge
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.recipe import TrainingRecipe

AGNEWS = "approx_agnews"


def _grid(**changes) -> dict:
    grid = {"base": "smollm2-135m", "task": AGNEWS, "expert": {"data": "ag_news:train", "size": 10},
            "corpus": {"spec": "seed:wikitext2", "size": 50},
            "strategies": ["random", "select", "gen_knn", "dsir", "rds"], "budgets": [5]}
    grid.update(changes)
    return grid


def _resolved(raw: dict):
    return config_from_dict(raw).resolve()


def test_the_prompt_prefix_is_the_template_before_the_text():
    assert prompt_prefix(get_task_spec(AGNEWS)) == "Article:"
    assert prompt_prefix(get_task_spec("approx_msmarco")) == ""


def test_label_words_are_banned_in_every_casing_with_and_without_a_space(tiny_llama):
    from lm_eval_approx.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    spec = get_task_spec(AGNEWS)
    banned = set(banned_token_ids(tokenizer, spec))
    for choice in spec.choices:
        for text in (choice, " " + choice, choice.lower(), " " + choice.lower()):
            assert tokenizer(text, add_special_tokens=False)["input_ids"][0] in banned
    assert banned_token_ids(tokenizer, get_task_spec("approx_msmarco")) == []


def _scores_by_definition(logits, base_logits, generated, banned, settings):
    """One row and one token at a time: the definition in the module docstring."""
    rows, vocab = logits.shape
    out = torch.empty(rows, vocab)
    for r in range(rows):
        logp = torch.log_softmax(logits[r].double(), -1)
        for t in banned:
            logp[t] = -math.inf
        scores = logp.clone()
        if base_logits is not None:
            base = torch.log_softmax(base_logits[r].double(), -1)
            top = max(logp.tolist())
            for t in range(vocab):
                scores[t] = logp[t] - base[t] if logp[t] >= top + math.log(generation.PLAUSIBILITY) else -math.inf
        if generated is not None:
            for t in set(generated[r].tolist()):
                scores[t] -= math.log(settings.repetition_penalty)
        out[r] = (scores / settings.temperature).float()
    return out


@pytest.mark.parametrize("contrast", [False, True])
def test_next_token_scores_match_the_definition(contrast):
    gen = torch.Generator().manual_seed(0)
    logits, base_logits = torch.randn(3, 11, generator=gen), torch.randn(3, 11, generator=gen)
    generated = torch.tensor([[1, 2], [2, 2], [5, 0]])
    settings = GenerationSettings(source="contrast" if contrast else "finetuned", temperature=0.7,
                                  repetition_penalty=1.5)
    fast = next_token_scores(logits, base_logits if contrast else None, generated, [4, 7], settings)
    slow = _scores_by_definition(logits, base_logits if contrast else None, generated, [4, 7], settings)
    assert torch.equal(torch.isinf(fast), torch.isinf(slow))
    finite = torch.isfinite(slow)
    assert torch.allclose(fast[finite], slow[finite], atol=1e-5)


def test_samples_are_seeded_skip_banned_and_stop_tokens_and_have_enough_words(tiny_llama, monkeypatch):
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    spec = get_task_spec(AGNEWS)
    settings = GenerationSettings(max_new_tokens=12, batch_size=4, min_words=2)
    seen: list[list[int]] = []
    real_batch = generation._sample_batch

    def recording(*args, **kwargs):
        rows = real_batch(*args, **kwargs)
        seen.extend(rows)
        return rows

    monkeypatch.setattr(generation, "_sample_batch", recording)
    texts, tokens = sample_texts(model, tokenizer, spec, 6, seed=3, settings=settings)
    again, _ = sample_texts(model, tokenizer, spec, 6, seed=3, settings=settings)
    other, _ = sample_texts(model, tokenizer, spec, 6, seed=4, settings=settings)
    assert texts == again and texts != other and len(texts) == 6
    assert all(len(text.split()) >= settings.min_words for text in texts)
    forbidden = set(banned_token_ids(tokenizer, spec)) | set(stop_token_ids(tokenizer))
    assert seen and not any(forbidden & set(ids) for ids in seen)
    assert all(len(ids) <= settings.max_new_tokens for ids in seen)
    assert tokens >= sum(len(ids) for ids in seen[:4])


def test_contrast_needs_theta0_and_only_contrast_takes_it(tiny_llama):
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    spec = get_task_spec(AGNEWS)
    with pytest.raises(ConfigError, match="contrast"):
        sample_texts(model, tokenizer, spec, 2, 0, GenerationSettings(source="contrast"))
    with pytest.raises(ConfigError, match="contrast"):
        sample_texts(model, tokenizer, spec, 2, 0, GenerationSettings(), base_model=model)
    texts, _ = sample_texts(model, tokenizer, spec, 3, 0, GenerationSettings(source="contrast", max_new_tokens=8,
                                                                             batch_size=4, min_words=1),
                            base_model=load_model(tiny_llama))
    assert len(texts) == 3


@pytest.mark.parametrize("bad", [{"source": "theta"}, {"top_p": 0.0}, {"temperature": 0},
                                 {"repetition_penalty": 0.5}, {"batch_size": 0}])
def test_bad_generation_settings_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        GenerationSettings(**bad)


def test_too_few_long_samples_is_a_named_error(tiny_llama):
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    with pytest.raises(ConfigError, match="min_words"):
        sample_texts(load_model(tiny_llama), load_tokenizer(tiny_llama), get_task_spec(AGNEWS), 2, 0,
                     GenerationSettings(max_new_tokens=2, batch_size=2, min_words=50))


def test_generated_texts_are_a_cached_stage(tiny_llama, monkeypatch):
    calls = []
    real = generation.sample_texts

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "sample_texts", counting)
    settings = GenerationSettings(max_new_tokens=8, batch_size=4, min_words=1)
    first, stage = generation.generated_texts(tiny_llama, tiny_llama, get_task_spec(AGNEWS), 4, 0, settings)
    second, again = generation.generated_texts(tiny_llama, tiny_llama, get_task_spec(AGNEWS), 4, 0, settings)
    assert first == second and len(calls) == 1 and again.cached and not stage.cached
    assert stage.info["generated_tokens"] > 0


def test_monitor_source_is_hashed_only_when_it_samples_and_needs_a_task_signal():
    rule = {"epochs": 8, "stop_on": "task_agreement", "patience": 2}
    task = TrainingRecipe.from_dict(rule)
    assert TrainingRecipe.from_dict({**rule, "monitor_source": "task"}).recipe_hash() == task.recipe_hash()
    assert TrainingRecipe.from_dict({**rule, "monitor_source": "finetuned"}).recipe_hash() != task.recipe_hash()
    with pytest.raises(ConfigError, match="monitor_source"):
        TrainingRecipe.from_dict({"stop_on": "validation_loss", "monitor_source": "finetuned"})
    with pytest.raises(ConfigError, match="monitor_source"):
        TrainingRecipe.from_dict({**rule, "monitor_source": "pool"})


def test_sampled_monitor_texts_come_from_the_generation_stage(tiny_llama):
    from lm_eval_approx.training.stop_signals import monitor_texts

    recipe = TrainingRecipe.from_dict({"stop_on": "task_agreement", "monitor_source": "base", "monitor_size": 3})
    texts = monitor_texts(get_task_spec(AGNEWS), recipe, set(), models=(tiny_llama, None))
    assert len(texts) == 3
    with pytest.raises(ConfigError, match="monitor_source"):
        monitor_texts(get_task_spec(AGNEWS), TrainingRecipe.from_dict({"stop_on": "task_agreement",
                                                                       "monitor_source": "finetuned"}), set())


def test_the_condition_sets_the_rule_and_the_baselines_targets():
    weights = _resolved(_grid())
    assert weights.condition == "weights"
    assert weights.retraining_for("select").monitor_source == "finetuned"
    assert weights.target_source_for("gen_knn") == "finetuned" and weights.target_source_for("select") is None
    texts = _resolved(_grid(condition="task_texts"))
    assert texts.retraining_for("select").monitor_source == "task"
    assert texts.target_source_for("dsir") == "task"
    own = _resolved(_grid(condition="task_texts", approx={"target_source": "base"}))
    assert own.target_source_for("rds") == "base"
    with pytest.raises(ConfigError, match="condition"):
        _resolved(_grid(condition="everything"))


def test_each_row_knows_what_it_used():
    weights = _resolved(_grid())
    texts = _resolved(_grid(condition="task_texts"))
    plain = _resolved(_grid(condition="task_texts", retraining={}))
    ceiling = _resolved(_grid(condition="true_data"))

    def knew(config, label, kind="approx"):
        return row_knowledge(config, Cell(f"{label}-k5-s0", kind, label, 5, 0))

    assert knew(weights, THETA0, THETA0) == WEIGHTS and knew(weights, EXPERT, EXPERT) == TRUE_DATA
    assert knew(weights, "select") == WEIGHTS and knew(weights, "gen_knn") == WEIGHTS
    assert knew(texts, "select") == TASK_TEXTS and knew(texts, "random") == TASK_TEXTS
    assert knew(plain, "random") == WEIGHTS and knew(plain, "dsir") == TASK_TEXTS
    assert knew(ceiling, "random") == TRUE_DATA


def test_the_cell_hash_names_the_target_texts_and_keeps_other_rows():
    from lm_eval_approx.leaderboard.cell_keys import cell_hash

    weights = _resolved(_grid(retraining={}))
    texts = _resolved(_grid(condition="task_texts", retraining={}))
    for label, same in (("random", True), ("select", True), ("gen_knn", False), ("dsir", False)):
        cell = Cell(f"{label}-k5-s0", "approx", label, 5, 0)
        assert (cell_hash(weights, cell) == cell_hash(texts, cell)) is same


def test_selection_cost_counts_each_stage_by_its_definition(monkeypatch):
    from lm_eval_approx.leaderboard import cost

    config = _resolved(_grid(retraining={}))
    monkeypatch.setattr(cost, "_pool_tokens", lambda *args: (1000, 800))
    monkeypatch.setattr(cost, "parameter_count", lambda base: 10)
    monkeypatch.setattr(cost, "sentence_model_parameters", lambda: 3)
    monkeypatch.setattr(cost, "_stage_info", lambda name, key: {"generated_tokens": 50})
    monkeypatch.setattr(cost, "_target_tokens", lambda *args: 200)

    def of(label, keys):
        return cost.selection_cost(config, Cell(f"{label}-k5-s0", "approx", label, 5, 0), keys)

    assert of("random", {"labels": "a", "selection": "b"}) == {
        "flops": 2 * 10 * 1000.0, "forward_tokens": 1000, "backward_tokens": 0, "generated_tokens": 0}
    select = of("select", {"labels": "a", "features": "c", "selection": "b"})
    assert select["flops"] == 2 * 10 * 1000 + 6 * 10 * 1000 and select["backward_tokens"] == 1000
    gen_knn = of("gen_knn", {"labels": "a", "generations": "g", "selection": "b"})
    assert gen_knn["flops"] == 2 * 10 * (1000 + 50) + 2 * 3 * (800 + 200)
    rds = of("rds", {"labels": "a", "generations": "g", "selection": "b"})
    assert rds["flops"] == 2 * 10 * (1000 + 50) + 2 * 10 * (800 + 200) and rds["forward_tokens"] == 2000
    dsir = of("dsir", {"labels": "a", "generations": "g", "selection": "b"})
    assert dsir["flops"] == 2 * 10 * (1000 + 50) and np.isfinite(dsir["flops"])
    # fused labels: θf's labels came from its own store's one forward and backward, counted once
    monkeypatch.setattr(cost, "_stage_info", lambda name, key: {"fused_store_seconds": 9.0} if name == "labels" else {})
    fused_random = of("random", {"labels": "a", "selection": "b"})
    fused_select = of("select", {"labels": "a", "features": "c", "selection": "b"})
    assert fused_random == fused_select == {
        "flops": 6 * 10 * 1000.0, "forward_tokens": 0, "backward_tokens": 1000, "generated_tokens": 0}
    checkpoints = of("select", {"labels": "a", "features": "c", "features@1/2": "d", "selection": "b"})
    assert checkpoints["backward_tokens"] == 2000  # α = 1/2 is a pass of its own


def test_a_fused_labels_stage_is_not_timed_twice_beside_its_store(tmp_path, monkeypatch):
    import json

    from lm_eval_approx.leaderboard import runner

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path))
    for name, key, seconds, info in (("labels", "a", 100.0, {"fused_store_seconds": 90.0}),
                                     ("features", "c", 90.0, {}), ("selection", "b", 1.0, {})):
        folder = tmp_path / "stages" / name / key
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps({"seconds": seconds, "info": info}))
    stages = ("labels", "features", "selection")
    assert runner._stage_seconds(stages, {"labels": "a", "selection": "b"}) == 101.0  # random paid the pass
    assert runner._stage_seconds(stages, {"labels": "a", "features": "c", "selection": "b"}) == 101.0


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory):
    """A tiny grid under the weights condition: the rule monitors θf's samples, and the three
    baselines aim at θf's samples."""
    from conftest import save_tiny_model
    from test_leaderboard import _mirror

    from lm_eval_approx.cli import main

    mirror = _mirror()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LM_EVAL_APPROX_DATA", str(mirror))
        mp.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path_factory.mktemp("weights-cache")))
        base = save_tiny_model(tmp_path_factory.mktemp("weights-llama"), "llama")
        out = tmp_path_factory.mktemp("weights-out") / "grid"
        code = main(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--out", str(out), "--no-progress",
                     "--set", "condition=weights", "--set", "extra_tasks=[]",
                     "--set", "strategies=[random, gen_knn, rds, dsir]",
                     "--set", "approx.target_size=6",
                     "--set", "retraining={epochs: 2, stop_on: task_agreement, patience: 1, monitor_size: 6, "
                              "monitor_source: finetuned}"])
        assert code == 0
        yield out


def test_a_weights_grid_records_what_each_row_knew_and_its_selection_cost(weights_run):
    import json

    records = {p.stem: json.loads(p.read_text())["config"]["leaderboard"]
               for p in (weights_run / "results").glob("*.json")}
    assert {r["knew"] for name, r in records.items() if r["kind"] == "approx"} == {WEIGHTS}
    assert records["expert"]["knew"] == TRUE_DATA and records["theta0"]["knew"] == WEIGHTS
    costs = {r["label"]: r["selection_cost"] for r in records.values() if r["kind"] == "approx"}
    assert costs["random"]["generated_tokens"] == 0 and costs["gen_knn"]["generated_tokens"] > 0
    assert costs["rds"]["flops"] > costs["dsir"]["flops"] > costs["random"]["flops"] > 0
    assert all(r["retraining"]["epochs_run"] >= 1 for r in records.values() if r["kind"] == "approx")
    table = (weights_run / "leaderboard.md").read_text()
    assert "knew" in table and "selection FLOPs" in table


@pytest.mark.parametrize("head", [2, 3, 50])
def test_nucleus_sampling_draws_the_nucleus_distribution_by_definition(head):
    """The top-p nucleus found among the ``head`` likeliest tokens, or by a full sort when it is
    larger, samples the definition's distribution: probabilities cut to the smallest prefix (by
    descending probability) whose mass reaches p, renormalised."""
    probs = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.2])
    top_p = 0.8
    nucleus, mass = [], 0.0
    for token in sorted(range(5), key=lambda t: -float(probs[t])):
        if mass >= top_p:
            break
        nucleus.append(token)
        mass += float(probs[token])
    expected = torch.zeros(5)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    rows = 20000
    scores = torch.log(probs).repeat(rows, 1)
    picks = generation.sample_from(scores, top_p, torch.Generator().manual_seed(0), head=head)
    freq = torch.bincount(picks, minlength=5).float() / rows
    assert set(picks.tolist()) == set(nucleus)
    assert torch.allclose(freq, expected, atol=0.015)


def test_the_estimate_counts_sampled_texts_once_per_draw_and_source():
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, estimate

    plain = _resolved(_grid(strategies=["random"], seeds=[0, 1], condition="task_texts", seed_retraining=True))
    sampled = _resolved(_grid(strategies=["random"], seeds=[0, 1], seed_retraining=True))
    extra = estimate(sampled).seconds["retraining"] - estimate(plain).seconds["retraining"]
    assert extra == pytest.approx(2 * 256 / CPU_RATES["generate"])  # one draw per retraining seed
    one = _resolved(_grid(strategies=["random", "dsir"], retraining={}))
    two = _resolved(_grid(strategies=["random", "dsir", "gen_knn"], retraining={}))
    added = estimate(two).seconds["labels+features"] - estimate(one).seconds["labels+features"]
    assert added == pytest.approx((50 + 256) / CPU_RATES["embed_sentence"])  # the targets are shared
