"""training/summary.py: the few fields a leaderboard row shows of a training record."""

from __future__ import annotations

import json

from lm_eval_approx.training.summary import kept_text, read_retraining_summary, retraining_summary


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
