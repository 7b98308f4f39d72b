"""lm-eval integration: the FastHFLM model type, the ``approx`` model, registration, CLI glue, the tied-head fix."""
