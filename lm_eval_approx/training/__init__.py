"""Retraining θ0: the recipe, rendered examples, per-example losses, the training loop and its resume state."""
