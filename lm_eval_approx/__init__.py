"""lm-eval-approx: recreate a finetune from public data (SELECT) and score it inside lm-eval."""

__version__ = "0.1.0"
