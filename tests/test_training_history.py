"""training/history.py and training/epoch_choice.py: the training record reads back every record on
disk unchanged, and the stop rule keeps the epoch its definition names."""

from __future__ import annotations

import json

import pytest

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.training.epoch_choice import choose_epoch, keep_theta0
from lm_eval_approx.training.history import PHASES, RECORD_FIELDS, TrainingHistory
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.summary import retraining_summary

# training.json as written before the history was a dataclass (copied from finished cells' stages,
# curves shortened): the current form, one from before phase and token counts, and an expert's that
# stopped on the validation loss (no best_signal).
CURRENT = {
    "base": "/cache/models/smollm2-135m-b179c9523d0e", "best_epoch": 2, "best_signal": 0.92578125,
    "best_validation_loss": 0.2698685346132455, "epochs_run": 3, "examples_per_second": 0.41792759796119494,
    "examples_seen": 810, "initial_validation_loss": 11.262223919232687, "key": "c1da794e77b05936", "method": "lora",
    "n_train": 270, "n_validation": 30,
    "phase_seconds": {"backward": 2363.683549991998, "forward": 1419.955164376981, "optimizer": 91.54163669199261,
                      "render": 0.32828973299911013, "validation": 72.93557243700343},
    "probe_seconds": 475.9791501889995,
    "probes": {"task_agreement": [0.109375, 0.8359375, 0.92578125, 0.91796875],
               "task_kl": [7.5584158901434675, 0.25605193580858887, 0.14661664419048587, 0.1699156064549406]},
    "recipe_hash": "beda2cbf518be47f", "resumed_from_epoch": None, "selection_hash": "5fe8813a4dff6898",
    "stop_on": "task_agreement", "stopped_early": False, "task": "approx_agnews",
    "tokens": {"padded": 126426, "real": 114024},
    "train_loss": [4.843714416027069, 0.6600636515547248, 0.24849262088537216], "train_seconds": 3876.269497164001,
    "validation_loss": [0.8243528846651316, 0.2698685346132455, 0.2891724715048137],
}
BEFORE_PHASES = {key: value for key, value in CURRENT.items() if key not in ("phase_seconds", "tokens")}
EXPERT = {
    "base": "smollm2-135m", "best_epoch": 1, "best_validation_loss": 0.5654390344955027, "epochs_run": 1,
    "examples_per_second": 1.1673604498293286, "examples_seen": 900, "initial_validation_loss": 7.4365946841239925,
    "key": "9dd516fc6fe98c76", "method": "lora", "n_train": 900, "n_validation": 100, "probe_seconds": 0.0,
    "probes": {}, "recipe_hash": "4ebcc1be9804088f", "resumed_from_epoch": None, "selection_hash": "0e731ee91037058a",
    "stop_on": "validation_loss", "stopped_early": False, "task": "approx_agnews", "train_loss": [1.2535252978927212],
    "train_seconds": 770.9700976519998, "validation_loss": [0.5654390344955027],
}


@pytest.mark.parametrize("record", [CURRENT, BEFORE_PHASES, EXPERT], ids=["current", "before-phases", "expert"])
def test_a_training_record_on_disk_reads_back_unchanged(record):
    history = TrainingHistory.from_json(json.dumps(record))
    history_fields = {key: value for key, value in record.items() if key not in RECORD_FIELDS}
    assert history.to_dict(steps=False) == history_fields  # same names, same values, nothing added
    assert TrainingHistory.from_json(history.to_json()) == history
    assert history.best_epoch == record["best_epoch"] and history.train_seconds == record["train_seconds"]


def test_a_record_from_before_stop_on_and_probes_reads_with_their_defaults():
    oldest = {key: CURRENT[key] for key in ("key", "n_train", "n_validation", "epochs_run", "train_loss",
                                            "validation_loss", "best_epoch", "best_validation_loss", "stopped_early",
                                            "resumed_from_epoch", "train_seconds", "examples_seen",
                                            "initial_validation_loss", "examples_per_second")}
    history = TrainingHistory.from_dict(oldest)
    assert (history.stop_on, history.probes, history.probe_seconds) == ("validation_loss", {}, 0.0)
    assert history.phase_seconds is None and history.tokens is None and history.best_signal is None
    assert retraining_summary(oldest) == {"stop_on": "validation_loss", "kept_epoch": 2, "epochs_run": 3,
                                          "stopped_early": False, "signal": CURRENT["validation_loss"]}
    assert retraining_summary(CURRENT)["signal"] == CURRENT["probes"]["task_agreement"]


def test_a_record_that_is_not_a_training_history_is_a_named_error():
    with pytest.raises(ConfigError, match="epochs_ran"):
        TrainingHistory.from_dict({"epochs_ran": 3})
    with pytest.raises(ConfigError, match="training record"):
        TrainingHistory.from_dict(["epochs_run", 3])
    with pytest.raises(ConfigError, match="valid JSON"):
        TrainingHistory.from_json("{not json")


def test_a_fresh_history_counts_time_and_tokens_and_resumes_with_counters():
    history = TrainingHistory.start("k", 9, 1, "validation_loss")
    assert set(history.phase_seconds) == set(PHASES) and history.tokens == {"real": 0, "padded": 0}
    history.count_tokens(5, 8)
    history.epochs_run = 2
    assert history.tokens == {"real": 5, "padded": 8}
    record = history.to_dict()
    assert "steps" in record and "best_signal" not in record and "examples_per_second" not in record
    resumed = TrainingHistory.resumed({key: value for key, value in record.items() if key not in ("phase_seconds",
                                                                                                 "tokens")})
    assert resumed.resumed_from_epoch == 2 and resumed.tokens == {"real": 0, "padded": 0}


def _kept_by_definition(values: list[float], higher_better: bool, theta0: bool, patience: int) -> tuple[int, int]:
    """Slow twin of the stop rule: (kept epoch, epochs run) for a signal curve whose index 0 is θ0
    (a candidate only under a probe): the first strictly best value among the epochs that ran, where
    the run stops once ``patience`` epochs in a row brought no strictly better value."""
    best, kept = (values[0], 0) if theta0 else (None, None)
    for epoch in range(1, len(values)):
        value = values[epoch]
        if best is None or (value > best if higher_better else value < best):
            best, kept = value, epoch
        elif patience and epoch - kept >= patience:
            return kept, epoch
    return kept, len(values) - 1


@pytest.mark.parametrize("curve, patience", [
    ([0.60, 0.80, 0.90, 0.85, 0.84, 0.95], 2),  # stops after two worse epochs: 0.95 never reached
    ([0.60, 0.80, 0.90, 0.85, 0.84, 0.95], 0),  # no patience: runs to the cap and keeps the last
    ([0.70, 0.60, 0.50, 0.65], 2),  # only drifts away from θf: θ0 is kept
    ([0.50, 0.70, 0.70, 0.70], 2),  # a tie keeps the earlier epoch
])
def test_a_probe_signal_keeps_the_epoch_of_its_definition(curve, patience):
    recipe = TrainingRecipe(stop_on="task_agreement", patience=patience, epochs=len(curve) - 1)
    history = TrainingHistory(stop_on="task_agreement", probes={"task_agreement": [curve[0]]})
    keep_theta0(history, recipe)
    for epoch in range(1, len(curve)):
        if history.stopped_early:
            break
        history.epochs_run = epoch
        history.probes["task_agreement"].append(curve[epoch])
        validation_loss = 1.0 / epoch
        assert choose_epoch(history, recipe, True, validation_loss) == (history.best_epoch == epoch)
    assert (history.best_epoch, history.epochs_run) == _kept_by_definition(curve, True, True, patience)
    assert history.best_signal == curve[history.best_epoch]
    assert history.best_validation_loss == 1.0 / history.epochs_run  # recorded, never deciding


def test_the_validation_loss_keeps_its_lowest_epoch_and_θ0_is_no_candidate():
    curve = [None, 0.9, 0.5, 0.6, 0.7, 0.4]
    recipe = TrainingRecipe(patience=2, epochs=5)
    history = TrainingHistory()
    for epoch in range(1, len(curve)):
        if history.stopped_early:
            break
        history.epochs_run = epoch
        choose_epoch(history, recipe, False, curve[epoch])
    assert (history.best_epoch, history.epochs_run, history.best_validation_loss) == (2, 4, 0.5)
    assert (history.best_epoch, history.epochs_run) == _kept_by_definition(curve, False, False, 2)
    nothing = TrainingHistory(epochs_run=1)
    assert not choose_epoch(nothing, recipe, False, None) and nothing.best_epoch is None


def test_a_training_writes_its_history_as_the_record(tiny_llama, tmp_path):
    from _specs import AGNEWS
    from test_training import FAST, toy_examples

    from lm_eval_approx.training.loop import CURVES_FILE, TRAINING_FILE, save_training, train_model

    examples, recipe = toy_examples(16), TrainingRecipe(epochs=1, **FAST)
    result = train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / "work", progress=False)
    assert isinstance(result.history, TrainingHistory) and result.history.epochs_run == 1
    out = save_training(result, tiny_llama, AGNEWS, examples, recipe, tmp_path / "out")
    record = json.loads((out / TRAINING_FILE).read_text())
    assert {key: value for key, value in record.items() if key not in RECORD_FIELDS} == result.history.to_dict(False)
    assert set(RECORD_FIELDS) <= set(record) and TrainingHistory.from_dict(record) == TrainingHistory(
        **{**result.history.to_dict(steps=False), "steps": []})
    assert json.loads((out / CURVES_FILE).read_text()) == json.loads(json.dumps(result.history.curves()))
