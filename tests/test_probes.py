"""Epoch probes and the teacher stop signal: the probe values equal their definitions computed the
slow way, measuring them leaves the trained weights unchanged, a teacher signal picks the kept
epoch (θ0 included) and counts the patience, and a recipe that names a signal nobody measures is a
named error. Old recipes keep their hashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import load_model, load_tokenizer
from _specs import AGNEWS
from lm_eval_approx.training.loop import train_model
from lm_eval_approx.training.probes import (
    accuracy_probe,
    agreement,
    choice_log_distribution,
    held_out_texts,
    kl_divergence,
    teacher_probes,
)
from lm_eval_approx.training.recipe import TrainingRecipe
from test_training import FAST, toy_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["The peace treaty leaders met", "The team match season ended", "stocks bank rates rose",
         "a chip computing science lab", "nothing in particular here"]


def _slow_choice_logprobs(model, tokenizer, text: str) -> np.ndarray:
    """One unbatched forward per choice: log p(delimiter + choice | context), normalised over choices."""
    from lm_eval_approx.features.encoding import encode_classification

    scores = []
    with torch.no_grad():
        for label in range(AGNEWS.num_classes):
            enc = encode_classification(tokenizer, AGNEWS, text, label, 128)
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            scores.append(sum(logp[p - 1, enc.ids[p]].item() for p in range(enc.start, len(enc.ids))))
    scores = torch.tensor(scores, dtype=torch.float64)
    return torch.log_softmax(scores, dim=0).numpy()


def test_choice_distribution_kl_and_agreement_match_their_definitions(tiny_llama, tiny_gpt2):
    tokenizer = load_tokenizer(tiny_llama)
    teacher, student = load_model(tiny_llama).eval(), load_model(tiny_gpt2).eval()
    fast_t = choice_log_distribution(teacher, tokenizer, AGNEWS, TEXTS, 2, 128)
    fast_s = choice_log_distribution(student, tokenizer, AGNEWS, TEXTS, 3, 128)
    slow_t = np.stack([_slow_choice_logprobs(teacher, tokenizer, t) for t in TEXTS])
    slow_s = np.stack([_slow_choice_logprobs(student, tokenizer, t) for t in TEXTS])
    np.testing.assert_allclose(fast_t, slow_t, atol=1e-4)
    np.testing.assert_allclose(fast_s, slow_s, atol=1e-4)
    p, q = np.exp(slow_t), np.exp(slow_s)
    by_definition = np.mean([sum(p[i, c] * np.log(p[i, c] / q[i, c]) for c in range(4)) for i in range(len(TEXTS))])
    assert kl_divergence(fast_t, fast_s) == pytest.approx(by_definition, rel=1e-3)
    assert kl_divergence(fast_t, fast_t) == pytest.approx(0.0, abs=1e-12)
    same = np.mean([np.argmax(slow_t[i]) == np.argmax(slow_s[i]) for i in range(len(TEXTS))])
    assert agreement(fast_t, fast_s) == same
    values = teacher_probes(teacher, tokenizer, AGNEWS, TEXTS, 2).measure(student, tokenizer)
    assert values["teacher_kl"] == pytest.approx(by_definition, rel=1e-3)
    assert values["teacher_agreement"] == same
    own = teacher_probes(teacher, tokenizer, AGNEWS, TEXTS, 2).measure(teacher, tokenizer)
    assert own == {"teacher_kl": pytest.approx(0.0, abs=1e-9), "teacher_agreement": 1.0}
    truth = [int(np.argmax(slow_s[i])) for i in range(len(TEXTS))]
    assert accuracy_probe(AGNEWS, TEXTS, truth, 2).measure(student, tokenizer) == {"accuracy": 1.0}
    labels = [t if i % 2 else (t + 1) % 4 for i, t in enumerate(truth)]
    renamed = teacher_probes(teacher, tokenizer, AGNEWS, TEXTS, 2, names=("dev_kl", "dev_agree"), labels=labels,
                             accuracy_name="dev_acc")
    assert renamed.higher_is_better == {"dev_kl": False, "dev_agree": True, "dev_acc": True}
    assert renamed.measure(student, tokenizer) == {
        "dev_kl": pytest.approx(by_definition, rel=1e-3), "dev_agree": same,
        "dev_acc": np.mean([a == b for a, b in zip(labels, truth)])}


def test_held_out_texts_never_return_a_selected_document():
    ids = [f"d{i}" for i in range(50)]
    texts = [f"text {i}" for i in range(50)]
    selected = {f"d{i}" for i in range(0, 50, 3)}
    picked = held_out_texts(texts, ids, selected, 20, seed=4)
    assert len(picked) == 20 == len(set(picked))
    assert not {f"text {i}" for i in range(0, 50, 3)} & set(picked)
    assert picked == held_out_texts(texts, ids, selected, 20, seed=4)
    assert len(held_out_texts(texts, ids, selected, 1000, seed=0)) == 50 - len(selected)
    with pytest.raises(ConfigError, match="monitor_size"):
        held_out_texts(texts[:2], ids[:2], {"d0", "d1"}, 5, seed=0)


def test_probes_leave_the_trained_weights_unchanged_and_are_recorded(tiny_llama, tmp_path):
    recipe = TrainingRecipe(**FAST, epochs=2)
    examples = toy_examples(24)
    teacher = load_model(tiny_llama)
    probe = teacher_probes(teacher, load_tokenizer(tiny_llama), AGNEWS, TEXTS, 4)
    plain = train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "a", progress=False)
    probed = train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "b", progress=False, probes=[probe])
    for (name, a), (_, b) in zip(plain.model.named_parameters(), probed.model.named_parameters()):
        assert torch.equal(a, b), name
    curves = probed.history.probes
    assert set(curves) == {"teacher_kl", "teacher_agreement"}
    assert len(curves["teacher_kl"]) == 3  # θ0, then after each of 2 epochs
    assert plain.history.probes == {}


def test_a_teacher_signal_picks_the_kept_epoch_and_counts_patience(tiny_llama, tmp_path, monkeypatch):
    from lm_eval_approx.training import probes as probes_module

    # Scripted signal values (θ0, epoch 1, 2, ...): the best is epoch 1, patience 2 stops after epoch 3.
    script = iter([0.5, 0.2, 0.3, 0.4, 0.1])
    probe = probes_module.Probe(lambda model, tok: {"teacher_kl": next(script)}, {"teacher_kl": False})
    recipe = TrainingRecipe(**FAST, epochs=5, patience=2, stop_on="teacher_kl")
    result = train_model(tiny_llama, AGNEWS, toy_examples(24), recipe, tmp_path / "w", progress=False, probes=[probe])
    history = result.history
    assert history.probes["teacher_kl"] == [0.5, 0.2, 0.3, 0.4]
    assert history.best_epoch == 1 and history.best_signal == 0.2
    assert history.stopped_early and history.epochs_run == 3
    assert len(history.validation_loss) == 3 and history.best_validation_loss == min(history.validation_loss)
    # The rule replay of benchmarks/epoch_curves.py --rules keeps what the loop kept, on the full curve.
    assert _epoch_curves().kept_epoch([0.5, 0.2, 0.3, 0.4, 0.1], False, True, 2) == history.best_epoch
    assert _epoch_curves().kept_epoch([0.5, 0.2, 0.3, 0.4, 0.1], False, True, 0) == 4


def _epoch_curves():
    from conftest import load_benchmark

    return load_benchmark("epoch_curves")


def test_the_rule_replay_keeps_the_loops_epoch_under_validation_loss(tiny_llama, tmp_path):
    """Validation loss: θ0 is never kept (the loop starts with no best); the replay agrees."""
    recipe = TrainingRecipe(**FAST, epochs=3, patience=1)
    history = train_model(tiny_llama, AGNEWS, toy_examples(24), recipe, tmp_path / "w", progress=False).history
    curve = [history.initial_validation_loss, *history.validation_loss]
    assert _epoch_curves().kept_epoch(curve, False, False, 1) == history.best_epoch >= 1


def test_theta0_is_kept_when_no_epoch_beats_it(tiny_llama, tmp_path):
    from lm_eval_approx.training import probes as probes_module

    script = iter([0.9, 0.5, 0.4])
    probe = probes_module.Probe(lambda model, tok: {"teacher_agreement": next(script)}, {"teacher_agreement": True})
    recipe = TrainingRecipe(**FAST, epochs=2, patience=0, stop_on="teacher_agreement")
    result = train_model(tiny_llama, AGNEWS, toy_examples(24), recipe, tmp_path / "w", progress=False, probes=[probe])
    assert result.history.best_epoch == 0 == _epoch_curves().kept_epoch([0.9, 0.5, 0.4], True, True, 0)
    theta0 = load_model(tiny_llama)
    merged = result.model.merge_and_unload()
    for name, value in theta0.state_dict().items():
        assert torch.allclose(merged.state_dict()[name], value), name


def test_stopping_on_a_signal_nobody_measures_is_a_named_error(tiny_llama, tmp_path):
    recipe = TrainingRecipe(**FAST, epochs=1, stop_on="teacher_kl")
    with pytest.raises(ConfigError, match="stop_on.*teacher probes need"):
        train_model(tiny_llama, AGNEWS, toy_examples(8), recipe, tmp_path / "w", progress=False)
    with pytest.raises(ConfigError, match="stop_on"):
        TrainingRecipe(stop_on="test_accuracy")
    with pytest.raises(ConfigError, match="monitor_size"):
        TrainingRecipe(monitor_size=0)


def test_new_recipe_fields_keep_old_hashes_and_count_only_when_used():
    plain = TrainingRecipe()
    assert plain.recipe_hash() == TrainingRecipe(monitor_size=99).recipe_hash()
    teacher = TrainingRecipe(stop_on="teacher_kl")
    assert teacher.recipe_hash() != plain.recipe_hash()
    assert teacher.recipe_hash() != TrainingRecipe(stop_on="teacher_kl", monitor_size=99).recipe_hash()
    assert TrainingRecipe.from_dict(teacher.to_dict()) == teacher


def test_a_run_stopped_on_a_teacher_signal_resumes_to_the_same_weights_and_curves(tiny_llama, tmp_path):
    """Interrupted after epoch 1 and rerun, training on a teacher signal ends where an uninterrupted
    run ends: same kept epoch, same probe curves, same weights (the curves live in the checkpoint)."""
    teacher = load_model(tiny_llama)
    probe = teacher_probes(teacher, load_tokenizer(tiny_llama), AGNEWS, TEXTS, 4)
    recipe = TrainingRecipe(**FAST, epochs=3, patience=0, stop_on="teacher_agreement")
    examples = toy_examples(24)
    whole = train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "whole", progress=False, probes=[probe])

    def crash(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "cut", progress=False, probes=[probe],
                    on_epoch_end=crash)
    resumed = train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "cut", progress=False, probes=[probe])
    assert resumed.history.resumed_from_epoch == 1
    assert resumed.history.probes == whole.history.probes
    assert resumed.history.best_epoch == whole.history.best_epoch
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("stop_on", ["task_agreement", "task_kl", "task_loss"])
def test_a_task_signal_on_a_template_task_is_a_named_error(stop_on):
    """A TemplateSpec has no training split to draw monitor texts from: a ConfigError naming stop_on,
    raised before any model is loaded (the model names below do not exist)."""
    from lm_eval_approx.training.stop_signals import monitor_texts, probes_for_selection

    recipe = TrainingRecipe(stop_on=stop_on)
    with pytest.raises(ConfigError, match=rf"stop_on='{stop_on}'.*approx_agnews has none") as caught:
        monitor_texts(AGNEWS, recipe, set())
    assert caught.value.field == "stop_on"
    with pytest.raises(ConfigError, match=rf"stop_on='{stop_on}'.*approx_agnews has none"):
        probes_for_selection(AGNEWS, recipe, [], base="no-such-base", finetuned="no-such-finetune")
