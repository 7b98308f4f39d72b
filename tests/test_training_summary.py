"""training/summary.py: the few fields a leaderboard row shows of a training record."""

from __future__ import annotations

import json

from lm_eval_approx.training.history import TrainingHistory
from lm_eval_approx.training.summary import kept_text, read_retraining_summary, retraining_seconds, retraining_summary


def test_a_probe_run_reports_its_signal_from_theta0_on_and_the_kept_epoch():
    record = {"stop_on": "task_agreement", "best_epoch": 2, "epochs_run": 4, "stopped_early": True,
              "probes": {"task_agreement": [0.6, 0.8, 0.9, 0.85, 0.84]}, "validation_loss": [1.0, 0.8, 0.7, 0.6]}
    summary = retraining_summary(record)
    assert summary == {"stop_on": "task_agreement", "kept_epoch": 2, "epochs_run": 4, "stopped_early": True,
                       "signal": [0.6, 0.8, 0.9, 0.85, 0.84]}
    assert kept_text(summary) == "2/4"


def test_a_record_saved_before_stop_on_existed_stopped_on_validation_loss(tmp_path):
    record = {"best_epoch": 1, "epochs_run": 2, "stopped_early": False, "validation_loss": [0.5, 0.6]}
    (tmp_path / "training.json").write_text(json.dumps(record))
    summary = read_retraining_summary(tmp_path)
    assert summary["stop_on"] == "validation_loss" and summary["signal"] == [0.5, 0.6]
    assert kept_text(summary) == "1/2"
    assert read_retraining_summary(tmp_path / "missing") is None
    assert kept_text(None) == "" and kept_text({"kept_epoch": None}) == ""
    for foreign in ("3/5", ["3"], {"kept_epoch": "3", "epochs_run": 5}, {"kept_epoch": True, "epochs_run": 5}):
        assert kept_text(foreign) == ""  # a results file from elsewhere: shown as unknown, never a crash


def test_a_resumed_retraining_costs_its_stage_seconds_plus_what_its_checkpoint_had_clocked():
    clocks = {"render": 1.0, "forward": 30.0, "backward": 40.0, "optimizer": 2.0, "validation": 5.0, "prefix": 3.0}
    straight = TrainingHistory(train_seconds=72.0, probe_seconds=20.0, phase_seconds=dict(clocks), epochs_run=3)
    assert straight.clocked_seconds() == 72.0 + 20.0 + 1.0 + 5.0 + 3.0  # forward/backward/optimizer lie in train
    assert retraining_seconds(130.0, straight) == 130.0  # not resumed: the stage timed all of it
    assert retraining_seconds(130.0, None) == 130.0
    resumed = TrainingHistory.resumed(straight.to_dict())
    assert resumed.seconds_at_resume == straight.clocked_seconds() and resumed.resumed_from_epoch == 3
    assert retraining_seconds(40.0, resumed) == 40.0 + 101.0
    again = TrainingHistory.resumed(resumed.to_dict())  # a second resume: the clocks are cumulative already
    assert again.seconds_at_resume == resumed.clocked_seconds()
    # resumed before histories recorded it: at least the clocked work, never the last attempt's alone
    older = dict(resumed.to_dict(), seconds_at_resume=None)
    assert retraining_seconds(40.0, TrainingHistory.from_dict(older)) == 101.0
    assert retraining_seconds(500.0, TrainingHistory.from_dict(older)) == 500.0
