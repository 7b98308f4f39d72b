"""Gradient features: the encoding rule, task losses, pseudo-labels, per-example gradients, projection, the store."""
