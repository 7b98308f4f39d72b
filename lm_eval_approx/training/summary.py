"""What a finished training run did, in a few fields a leaderboard row can show: which epoch the
stop rule kept, how many epochs ran, on which signal, and that signal's curve.

``training.json`` (written by ``training/loop.py``) holds the whole history (``training/history.py``);
this module reads it without torch, so the leaderboard can record a cell's retraining beside its score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval_approx.training.history import VALIDATION_LOSS, TrainingHistory

TRAINING_FILE = "training.json"


def retraining_summary(record: dict[str, Any] | TrainingHistory) -> dict[str, Any]:
    """``{"stop_on", "kept_epoch", "epochs_run", "stopped_early", "signal"}`` of a training record.

    ``signal`` is the stop signal per epoch (index 0 is θ0, before any step, when the signal is a
    probe; a run that stops on the validation loss of its selection has no θ0 value there).
    ``kept_epoch`` 0 means the rule kept θ0 itself. A record written before ``stop_on`` existed
    stopped on the validation loss."""
    history = record if isinstance(record, TrainingHistory) else TrainingHistory.from_dict(record)
    stop_on = history.stop_on
    signal = history.probes.get(stop_on) if stop_on != VALIDATION_LOSS else history.validation_loss
    return {"stop_on": stop_on, "kept_epoch": history.best_epoch, "epochs_run": history.epochs_run,
            "stopped_early": bool(history.stopped_early), "signal": list(signal or [])}


def retraining_seconds(stage_seconds: float, history: TrainingHistory | None) -> float:
    """A retraining's cost in seconds: its stage's, which times only the attempt that finished, plus
    what the checkpoint it resumed from had clocked. A run resumed before histories recorded that
    (no ``seconds_at_resume``) reports at least its history's clocked work."""
    if history is None or history.resumed_from_epoch is None:
        return stage_seconds
    if history.seconds_at_resume is not None:
        return stage_seconds + history.seconds_at_resume
    return max(stage_seconds, history.clocked_seconds())


def read_training_history(folder: str | Path) -> TrainingHistory | None:
    """The training record in ``folder``, or None when it has none (a model that was not trained by
    this tool)."""
    path = Path(folder) / TRAINING_FILE
    if not path.is_file():
        return None
    return TrainingHistory.from_json(path.read_text(encoding="utf-8"))


def read_retraining_summary(folder: str | Path) -> dict[str, Any] | None:
    """The summary of the training record in ``folder``, or None when it has none."""
    history = read_training_history(folder)
    return None if history is None else retraining_summary(history)


def kept_text(summary: dict[str, Any] | None) -> str:
    """``2/4``: the kept epoch of the epochs run (empty when unknown, or when a results file from
    elsewhere holds something other than two whole numbers there)."""
    if not isinstance(summary, dict):
        return ""
    kept, run = summary.get("kept_epoch"), summary.get("epochs_run")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (kept, run)):
        return ""
    return f"{kept}/{run}"
