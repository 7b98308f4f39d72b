"""Which epoch a training keeps, and when it stops: the recipe's stop rule applied to a history.

* At most ``recipe.epochs`` epochs run.
* ``recipe.stop_on`` names the signal: ``validation_loss`` (the selection's held-out share, lower is
  better) or a probe measured on monitor texts (``training/probes.py``, drawn by
  ``training/stop_signals.py``; its direction comes from the probe). Under a probe, θ0 itself is
  epoch 0 and a candidate, so a retraining that only drifts away from θf keeps θ0's weights.
* An epoch is kept when its signal is strictly better than the best so far (a tie keeps the earlier).
* Training stops after ``recipe.patience`` epochs in a row without a better signal (0: never early).
* The kept weights are those of the best epoch; a run that measured no signal at all (validation
  loss with no validation examples) keeps its last epoch.

Under a probe the validation loss is still measured and its best value recorded, but it keeps nothing.
"""

from __future__ import annotations

from lm_eval_approx.training.history import TrainingHistory
from lm_eval_approx.training.probes import improves
from lm_eval_approx.training.recipe import TrainingRecipe


def keep_theta0(history: TrainingHistory, recipe: TrainingRecipe) -> None:
    """θ0 as the kept epoch 0 under a probe signal (its value measured before the first epoch)."""
    history.best_epoch, history.best_signal = 0, history.probes[recipe.stop_on][0]


def choose_epoch(history: TrainingHistory, recipe: TrainingRecipe, higher_better: bool,
                 validation_loss: float | None) -> bool:
    """Weigh the epoch just run (``history.epochs_run``, its probes already recorded) against the
    kept one: True when it becomes the kept epoch; sets ``stopped_early`` when patience runs out."""
    epoch = history.epochs_run
    signal: float | None  # the probe's value, or the validation loss (None when none was measured)
    if recipe.uses_probe:
        signal = history.probes[recipe.stop_on][-1]
        better = improves(higher_better, signal, history.best_signal)
        if validation_loss is not None and improves(False, validation_loss, history.best_validation_loss):
            history.best_validation_loss = validation_loss
    else:
        signal = validation_loss
        better = signal is not None and improves(False, signal, history.best_validation_loss)
    if signal is None:
        return False
    if better:
        history.best_epoch = epoch
        if recipe.uses_probe:
            history.best_signal = signal
        else:
            history.best_validation_loss = signal
        return True
    if recipe.patience and epoch - history.best_epoch >= recipe.patience:  # type: ignore[operator]  # kept epoch set
        history.stopped_early = True
    return False
