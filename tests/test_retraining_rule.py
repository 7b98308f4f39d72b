"""The retraining rule (``training/retraining_rule.py``): the default of every approximation's
retraining, never of the expert's. Its stop signal ``task_agreement`` is measured on unlabelled
texts of the task's own training split, and equals agreement computed by its definition; a task
without a training split is refused with the field named; leaderboard configs and
``--model approx`` start from the rule and let a row, a flag or a recipe file override it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING
from lm_eval_approx.training.recipe import TASK_AGREEMENT, TASK_LOSS, VALIDATION_LOSS, TrainingRecipe
from lm_eval_approx.training.retraining_rule import retraining_rule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = [{"text": f"note {i} felt {'bright and warm' if i % 2 else 'grey and cold'}", "label": i % 2} for i in range(12)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _task(tmp_path, name: str, with_training_split: bool = True):
    """A two-choice YAML task over temporary JSONL files (optionally without a training split)."""
    folder = tmp_path / f"{name}_tasks"
    folder.mkdir()
    test = _jsonl(tmp_path / f"{name}_test.jsonl", [{"text": f"note {i} felt calm", "label": i % 2} for i in range(4)])
    train = _jsonl(tmp_path / f"{name}_train.jsonl", TRAIN)
    split = f"    train: {train}\n" if with_training_split else ""
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n{split}    test: {test}\n"
        + ("training_split: train\n" if with_training_split else "")
        + "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Note: {{text}}\\nMood:\"\n"
        "doc_to_choice: ['sad', 'happy']\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    return folder


@pytest.fixture
def fresh_tasks():
    from lm_eval_approx.plugins import registry
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    yield
    registry._included.clear()
    reset_task_caches()


def test_the_rule_is_task_agreement_for_classification_and_the_plain_recipe_otherwise():
    rule = retraining_rule(CLASSIFICATION)
    assert rule == {"epochs": 8, "stop_on": TASK_AGREEMENT, "patience": 2}
    rule["epochs"] = 1
    assert retraining_rule(CLASSIFICATION)["epochs"] == 8  # a copy each time
    assert retraining_rule(LANGUAGE_MODELLING) == {"epochs": 8, "stop_on": TASK_LOSS, "patience": 2}
    recipe = TrainingRecipe(**retraining_rule(CLASSIFICATION))
    assert recipe.uses_teacher and recipe.recipe_hash() != TrainingRecipe(epochs=8, patience=2).recipe_hash()


def test_model_approx_starts_from_the_rule_and_flags_or_a_recipe_file_override_it(tiny_llama, tmp_path):
    from lm_eval_approx.harness.approx_model import split_model_args

    args = {"base": tiny_llama, "finetuned": tiny_llama}
    _, recipe, _ = split_model_args(dict(args))
    assert (recipe.epochs, recipe.stop_on, recipe.patience) == (8, TASK_AGREEMENT, 2)
    _, recipe, _ = split_model_args({**args, "train_epochs": "3", "train_stop_on": VALIDATION_LOSS})
    assert (recipe.epochs, recipe.stop_on, recipe.patience) == (3, VALIDATION_LOSS, 2)
    _, recipe, _ = split_model_args({**args, "task": "approx_msmarco"})
    assert (recipe.epochs, recipe.stop_on) == (8, TASK_LOSS)
    path = TrainingRecipe(epochs=2).save(tmp_path / "recipe.json")
    _, recipe, _ = split_model_args({**args, "recipe": str(path)})
    assert recipe == TrainingRecipe(epochs=2)  # a whole recipe file is taken as it is


def test_task_agreement_is_measured_on_the_tasks_training_texts_and_matches_its_definition(
        tiny_llama, tmp_path, monkeypatch, fresh_tasks):
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.pipeline import ApproxConfig, run_approximation
    from lm_eval_approx.plugins.registry import include_task_folders
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training import probes as probes_module
    from lm_eval_approx.training.examples import task_examples
    from lm_eval_approx.training.loop import TRAINING_FILE, train_adapter

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    include_task_folders([str(_task(tmp_path, "rule_moods"))])
    spec = get_task_spec("rule_moods")
    expert = train_adapter(tiny_llama, spec, task_examples(spec, None, 0),
                           TrainingRecipe(epochs=2, batch_size=4, learning_rate=1e-2), tmp_path / "expert",
                           progress=False)
    pool = _jsonl(tmp_path / "pool.jsonl", [{"text": TRAIN[i]["text"]} for i in range(4)]
                  + [{"text": f"pool text {i} about {w}"} for i, w in enumerate(["sun", "rain"] * 6)])
    seen = {}
    real = probes_module.teacher_probes

    def spy(teacher, tokenizer, spec, texts, *args, **kwargs):
        seen.update(texts=list(texts), names=kwargs.get("names"))
        return real(teacher, tokenizer, spec, texts, *args, **kwargs)

    monkeypatch.setattr(probes_module, "teacher_probes", spy)
    config = ApproxConfig(base=tiny_llama, finetuned=str(expert), task="rule_moods", corpus=pool, strategy="random",
                          k=6, dim=64, extract_batch_size=4, extract_max_length=64)
    recipe = TrainingRecipe(epochs=2, batch_size=4, max_length=64, validation_fraction=0.0,
                            stop_on=TASK_AGREEMENT, patience=0, monitor_size=8)
    result = run_approximation(config, recipe)
    selected = {json.loads(line)["text"] for line in result.selection.read_text().splitlines()}
    train_texts = {row["text"] for row in TRAIN}
    assert seen["names"] == ("task_kl", "task_agreement")
    assert 0 < len(seen["texts"]) <= 8 and set(seen["texts"]) <= train_texts - selected
    history = json.loads((result.adapter / TRAINING_FILE).read_text())
    assert len(history["probes"][TASK_AGREEMENT]) == 3 and history["stop_on"] == TASK_AGREEMENT
    tokenizer = load_tokenizer(tiny_llama)
    log_f = probes_module.choice_log_distribution(load_model(str(expert)), tokenizer, spec, seen["texts"], 4, 64)
    log_0 = probes_module.choice_log_distribution(load_model(tiny_llama), tokenizer, spec, seen["texts"], 4, 64)
    by_definition = float(np.mean(log_f.argmax(axis=1) == log_0.argmax(axis=1)))
    assert history["probes"][TASK_AGREEMENT][0] == pytest.approx(by_definition)
    kept = history["best_epoch"]
    assert history["probes"][TASK_AGREEMENT][kept] == max(history["probes"][TASK_AGREEMENT])


def test_task_signals_need_a_training_split_and_a_classification_task(tiny_llama, tmp_path, monkeypatch, fresh_tasks):
    from lm_eval_approx.pipeline import ApproxConfig, run_approximation
    from lm_eval_approx.plugins.registry import include_task_folders

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    include_task_folders([str(_task(tmp_path, "bare_moods", with_training_split=False))])
    pool = _jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text {i}"} for i in range(10)])
    config = ApproxConfig(base=tiny_llama, finetuned=tiny_llama, task="bare_moods", corpus=pool, strategy="random",
                          k=4, dim=64, extract_batch_size=4, extract_max_length=64)
    recipe = TrainingRecipe(epochs=1, batch_size=4, max_length=64, validation_fraction=0.0, stop_on=TASK_AGREEMENT)
    with pytest.raises(ConfigError, match="training split") as caught:
        run_approximation(config, recipe)
    assert caught.value.field == "stop_on"


def test_a_task_without_a_training_split_keeps_the_plain_recipe_and_says_why(tiny_llama, tmp_path, caplog,
                                                                            fresh_tasks):
    from lm_eval_approx.harness.approx_model import split_model_args
    from lm_eval_approx.plugins.registry import include_task_folders

    include_task_folders([str(_task(tmp_path, "bare_notes", with_training_split=False))])
    with caplog.at_level("WARNING"):
        _, recipe, _ = split_model_args({"base": tiny_llama, "finetuned": tiny_llama, "task": "bare_notes"})
    assert recipe == TrainingRecipe()
    assert "bare_notes has no training split" in caplog.text


def test_leaderboard_rows_retrain_under_the_rule_unless_the_config_says_otherwise(tiny_llama):
    from lm_eval_approx.leaderboard.config import config_from_dict
    from lm_eval_approx.leaderboard.runner import approx_model_args, cell_hash

    raw = {"base": tiny_llama, "expert": {"data": "ag_news:train", "size": 8},
           "corpus": {"spec": "seed:wikitext2", "size": 20}, "budgets": [4],
           "strategies": ["random", {"name": "select", "recipe": {"epochs": 3}}], "recipe": {"batch_size": 8},
           "condition": "task_texts"}
    assert config_from_dict(raw).retraining is None  # the rule comes with the task, when resolved
    ruled = config_from_dict(raw).resolve()
    assert ruled.retraining == retraining_rule(CLASSIFICATION)
    weights = config_from_dict({**raw, "condition": "weights"}).resolve()
    assert weights.retraining == {**retraining_rule(CLASSIFICATION), "monitor_source": "finetuned"}
    assert ruled.recipe_for().epochs == 1 and ruled.recipe_for().stop_on == VALIDATION_LOSS  # the expert
    random_recipe, select_recipe = ruled.retraining_for("random"), ruled.retraining_for("select")
    assert (random_recipe.epochs, random_recipe.stop_on, random_recipe.batch_size) == (8, TASK_AGREEMENT, 8)
    assert (select_recipe.epochs, select_recipe.stop_on) == (3, TASK_AGREEMENT)  # the row's recipe wins
    cell = ruled.cells()[2]
    assert approx_model_args(ruled, cell, "expert")["train_stop_on"] == TASK_AGREEMENT
    plain = config_from_dict({**raw, "retraining": {}}).resolve()
    assert plain.retraining_for("random") == plain.recipe_for()
    assert cell_hash(plain, cell) != cell_hash(ruled, cell)
    assert [cell_hash(plain, c) for c in plain.cells()[:2]] == [cell_hash(ruled, c) for c in ruled.cells()[:2]]
    lm = config_from_dict({**raw, "task": "approx_msmarco", "expert": {"data": "msmarco:train", "size": 8}}).resolve()
    assert lm.retraining == retraining_rule(LANGUAGE_MODELLING)
    for bad, field in (({"stop_on": "test_accuracy"}, "retraining.stop_on"), ([1], "retraining")):
        with pytest.raises(ApproxError) as caught:
            config_from_dict({**raw, "retraining": bad})
        assert caught.value.field == field


def _nll_by_definition(model, tokenizer, text: str) -> float:
    """Mean next-token NLL of [prefix] + the text's tokens, from one plain forward."""
    import torch

    from lm_eval_approx.features.encoding import prefix_token_id, tok_encode

    ids = torch.tensor([[prefix_token_id(tokenizer), *tok_encode(tokenizer, text)]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


def test_task_loss_is_the_mean_loss_of_the_monitor_texts_and_refuses_classification(tiny_llama):
    from _specs import AGNEWS, MSMARCO

    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.training.probes import loss_probe

    model, tokenizer = load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)
    texts = ["the river ran past the old mill", "a short note", "stocks rose and fell and rose again today"]
    value = loss_probe(MSMARCO, texts, 2, 128).measure(model, tokenizer)[TASK_LOSS]
    by_definition = np.mean([_nll_by_definition(model, tokenizer, t) for t in texts])
    assert value == pytest.approx(by_definition, rel=1e-4)
    with pytest.raises(ConfigError, match="task_agreement"):
        loss_probe(AGNEWS, texts)


def test_a_language_modelling_retraining_stops_on_its_task_loss(tiny_llama, mirror, tmp_path, monkeypatch):
    """approx_msmarco under the rule's signal: the monitor texts are MS MARCO train passages, the
    curve is recorded from θ0 on, and the kept epoch is the one with the lowest task loss."""
    from lm_eval_approx.pipeline import ApproxConfig, run_approximation
    from lm_eval_approx.training.loop import TRAINING_FILE

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    pool = _jsonl(tmp_path / "pool.jsonl", [{"text": f"pool passage {i} about the {w} and its history"}
                                            for i, w in enumerate(["river", "mill", "market", "chip"] * 3)])
    config = ApproxConfig(base=tiny_llama, finetuned=tiny_llama, task="approx_msmarco", corpus=pool,
                          strategy="random", k=4, dim=64, extract_batch_size=4, extract_max_length=64)
    recipe = TrainingRecipe(epochs=2, batch_size=4, max_length=64, validation_fraction=0.0, learning_rate=1e-2,
                            stop_on=TASK_LOSS, patience=0, monitor_size=4)
    history = json.loads((run_approximation(config, recipe).adapter / TRAINING_FILE).read_text())
    curve = history["probes"][TASK_LOSS]
    assert len(curve) == 3 and all(np.isfinite(curve))
    assert curve[history["best_epoch"]] == min(curve)


def test_the_train_command_retrains_a_selection_file_under_the_rule(tiny_llama, tmp_path, monkeypatch, fresh_tasks,
                                                                    capsys):
    """``train --retraining-rule``: the rule over the defaults, flags over the rule; θf is required
    for the classification rule (a named error before anything is trained); the monitor texts are
    the task's training texts minus the selection; an output folder trained against one θf is not
    reused for another."""
    from lm_eval_approx.cli import main
    from lm_eval_approx.data.selection_file import write_selection
    from lm_eval_approx.plugins.registry import include_task_folders
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training import probes as probes_module
    from lm_eval_approx.training.examples import task_examples
    from lm_eval_approx.training.loop import TRAINING_FILE, train_adapter

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    folder = _task(tmp_path, "cli_moods")
    include_task_folders([str(folder)])
    spec = get_task_spec("cli_moods")
    expert = train_adapter(tiny_llama, spec, task_examples(spec, None, 0),
                           TrainingRecipe(epochs=2, batch_size=4, learning_rate=1e-2), tmp_path / "expert",
                           progress=False)
    selection = write_selection(tmp_path / "sel.jsonl", task_examples(spec, 4, 1))
    selected = {json.loads(line)["text"] for line in selection.read_text().splitlines()}
    seen = {}
    real = probes_module.teacher_probes

    def spy(teacher, tokenizer, spec, texts, *args, **kwargs):
        seen.update(texts=list(texts), names=kwargs.get("names"))
        return real(teacher, tokenizer, spec, texts, *args, **kwargs)

    monkeypatch.setattr(probes_module, "teacher_probes", spy)
    out = tmp_path / "retrained"
    common = ["train", "--base", tiny_llama, "--task", "cli_moods", "--include-path", str(folder), "--data",
              str(selection), "--out", str(out), "--retraining-rule", "--batch-size", "4", "--max-length", "64",
              "--validation-fraction", "0", "--monitor-size", "6", "--no-progress"]
    assert main([*common, "--epochs", "2"]) == 2  # no θf: the classification rule cannot be measured
    assert "finetuned" in capsys.readouterr().err and not out.exists()

    assert main([*common, "--epochs", "2", "--finetuned", str(expert)]) == 0
    history = json.loads((out / TRAINING_FILE).read_text())
    assert (history["stop_on"], len(history["probes"][TASK_AGREEMENT])) == (TASK_AGREEMENT, 3)  # θ0 + 2 epochs
    assert history["probes"][TASK_AGREEMENT][history["best_epoch"]] == max(history["probes"][TASK_AGREEMENT])
    assert seen["names"] == ("task_kl", "task_agreement")
    assert 0 < len(seen["texts"]) <= 6 and set(seen["texts"]) <= {row["text"] for row in TRAIN} - selected
    assert f"best epoch {history['best_epoch']} of 2, task_agreement" in capsys.readouterr().out

    key = history["key"]
    assert main([*common, "--epochs", "2", "--finetuned", str(expert)]) == 0  # the same training: reused
    assert json.loads((out / TRAINING_FILE).read_text())["key"] == key
    assert main([*common, "--epochs", "2", "--finetuned", tiny_llama]) == 0  # another θf: retrained
    assert json.loads((out / TRAINING_FILE).read_text())["key"] != key


def test_the_train_command_rule_for_language_modelling_needs_no_finetuned(tiny_llama, mirror, tmp_path, monkeypatch,
                                                                         caplog):
    from lm_eval_approx.cli import main
    from lm_eval_approx.data.selection_file import SelectedExample, write_selection
    from lm_eval_approx.training.loop import TRAINING_FILE

    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    rows = [SelectedExample(id=f"p{i}", text=f"passage {i} about the {w} and its long history", label=None,
                            label_text=None, order=i, source="pool")
            for i, w in enumerate(["river", "mill", "market", "chip"])]
    selection = write_selection(tmp_path / "sel.jsonl", rows)
    argv = ["train", "--base", tiny_llama, "--task", "approx_msmarco", "--data", str(selection), "--out",
            str(tmp_path / "lm"), "--retraining-rule", "--epochs", "1", "--batch-size", "4",
            "--max-length", "64", "--validation-fraction", "0", "--monitor-size", "3", "--no-progress"]
    assert main(argv) == 0
    history = json.loads((tmp_path / "lm" / TRAINING_FILE).read_text())
    assert history["stop_on"] == TASK_LOSS and len(history["probes"][TASK_LOSS]) == 2
    assert history["probes"][TASK_LOSS][history["best_epoch"]] == min(history["probes"][TASK_LOSS])
    with caplog.at_level("WARNING"):  # θf given anyway: said to be unused, and the folder is reused as it is
        assert main([*argv, "--finetuned", tiny_llama]) == 0
    assert "does not use it" in caplog.text
    assert json.loads((tmp_path / "lm" / TRAINING_FILE).read_text())["key"] == history["key"]
