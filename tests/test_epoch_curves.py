"""benchmarks/epoch_curves.py: the curves of a classification and of a language-modelling cell,
with the weights condition's signals on sampled texts, and the rule replay over them."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

EPOCHS = 2


@pytest.fixture(scope="module")
def epoch_curves():
    return load_benchmark("epoch_curves")


def _config(folder, base: str, **changes) -> str:
    """A tiny leaderboard config (YAML is a superset of JSON) under the weights condition."""
    raw = {"base": base, "task": "approx_agnews", "condition": "weights",
           "expert": {"data": "ag_news:train", "size": 12, "seed": 0},
           "corpus": {"spec": "seed:wikitext2", "size": 30, "seed": 0},
           "strategies": ["random"], "budgets": [6], "seeds": [0], "extra_tasks": [], "limit": 4,
           "recipe": {"epochs": 1, "batch_size": 4, "max_length": 64, "validation_fraction": 0.34},
           "approx": {"dim": 64, "extract_batch_size": 8, "extract_max_length": 64},
           "similarity": {"embed": False, "reference_size": 8}, "device": "cpu", "batch_size": 8}
    raw.update(changes)
    path = folder / f"{raw['task']}.yaml"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return str(path)


def _run(module, config: str, out, *extra) -> dict:
    argv = ["--config", config, "--out", str(out), "--cell", f"random:6:0:{EPOCHS}", "--dev-size", "5",
            "--monitor-size", "3", "--batch-size", "4", "--sampled", "finetuned", "--sample-tokens", "16", *extra]
    assert module.main(argv) == 0
    return json.loads((out / "random-k6-s0.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("task", ["approx_agnews", "approx_msmarco"])
def test_a_cell_records_the_sampled_signals_every_epoch_and_the_rules_replay_them(
        epoch_curves, tiny_llama, mirror, tmp_path, monkeypatch, capsys, one_torch_thread, task):
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    classification = task == "approx_agnews"
    changes = {} if classification else {"task": task, "expert": {"data": "msmarco:train", "size": 12, "seed": 0}}
    # The weights rule of the config (sampled monitor texts) is replaced by fixed epochs on the curves.
    changes["retraining"] = {"epochs": 8, "stop_on": "task_agreement" if classification else "task_loss",
                             "monitor_source": "finetuned", "monitor_size": 3}
    out = tmp_path / "epochs"
    record = _run(epoch_curves, _config(tmp_path, tiny_llama, **changes), out)

    curves = record["curves"]
    new = ["finetuned_kl", "finetuned_agreement"] if classification else ["finetuned_loss", "dev_loss"]
    old = ["teacher_kl", "teacher_agreement", "dev_teacher_kl", "dev_teacher_agreement", "dev_accuracy"]
    for name in ["validation_loss", *new, *(old if classification else [])]:
        assert len(curves[name]) == EPOCHS + 1 and all(v is not None for v in curves[name]), name
    assert classification or not set(old) & set(curves)  # no accuracy, no choice distributions
    assert record["sampled_sizes"] == {"finetuned": 3} and record["recipe"]["monitor_source"] == "task"
    assert record["monitor_size"] == (3 if classification else 0)  # texts, not the resume key's characters
    assert record["recipe"]["stop_on"] == "validation_loss" and record["epochs"] == EPOCHS
    capsys.readouterr()

    assert epoch_curves.main(["--out", str(out), "--rules"]) == 0
    table = capsys.readouterr().out
    assert ("best dev acc" in table) == classification and ("best dev loss" in table) != classification
    for name in ["validation_loss", *new]:
        assert f"| random-k6-s0 | {EPOCHS} | {name} |" in table, name

    assert epoch_curves.main(["--out", str(out), "--plot", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_rule_table_keeps_the_lowest_dev_loss_and_keeps_classification_rows_as_they_were(
        epoch_curves, tmp_path):
    lm = {"cell": "select-k4-s0", "strategy": "select", "k": 4, "curves": {
        "validation_loss": [3.0, 2.0, 2.5, 2.6], "dev_loss": [5.0, 4.0, 3.5, 3.9],
        "finetuned_loss": [4.0, 4.2, 3.0, 3.1], "base_loss": [4.0, 4.1, 4.3, 4.4]}}
    acc = {"cell": "random-k4-s0", "strategy": "random", "k": 4, "curves": {
        "validation_loss": [1.0, 0.9, 0.8], "dev_accuracy": [0.5, 0.7, 0.6],
        "teacher_agreement": [0.4, 0.6, 0.5], "contrast_agreement": [0.6, 0.5, 0.7], "contrast_kl": [0.2, 0.1, 0.3]}}
    (tmp_path / "lm.json").write_text(json.dumps(lm))
    only_acc = tmp_path / "acc"
    only_acc.mkdir()
    (only_acc / "acc.json").write_text(json.dumps(acc))
    before = epoch_curves.rule_table(only_acc)
    (tmp_path / "acc.json").write_text(json.dumps(acc))

    lines = epoch_curves.rule_table(tmp_path).splitlines()
    assert lines[:len(before.splitlines())] == before.splitlines()  # the accuracy table first, as it was
    assert lines[len(before.splitlines())] == ""
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| select-k4-s0")}
    # θ0 is a candidate for a sampled signal: base_loss never improves on it.
    assert rows["base_loss"] == ("| select-k4-s0 | 3 | base_loss | 0: 5.000 | 0: 5.000 | 0: 5.000 | 0: 5.000 "
                                 "| 2: 3.500 |")
    assert rows["finetuned_loss"].split(" | ")[3:7] == ["0: 5.000", "2: 3.500", "2: 3.500", "2: 3.500"]
    assert rows["validation_loss"].split(" | ")[3] == "1: 4.000"  # θ0 is no candidate for it
    assert rows["dev_loss"].split(" | ")[3] == "2: 3.500"
    acc_rows = {line.split(" | ")[2]: line for line in before.splitlines() if line.startswith("| random")}
    assert acc_rows["contrast_agreement"].split(" | ")[3] == "0: 0.500"
    assert acc_rows["contrast_kl"].split(" | ")[3:7] == ["1: 0.700"] * 4
    assert list(acc_rows) == ["validation_loss", "teacher_agreement", "contrast_kl", "contrast_agreement"]

    assert epoch_curves.plotted_signals([acc["curves"]]) == [*epoch_curves.SIGNALS, "contrast_kl",
                                                             "contrast_agreement"]
    assert epoch_curves.plotted_signals([lm["curves"]]) == ["validation_loss", "dev_loss", "finetuned_loss",
                                                            "base_loss"]


def test_the_sampled_sources_are_the_samplers_of_the_weights_condition(epoch_curves):
    from lm_eval_approx.features.generation import SOURCES
    from lm_eval_approx.training.recipe import MONITOR_SOURCES

    assert epoch_curves.SAMPLED_SOURCES == SOURCES == MONITOR_SOURCES[1:]
