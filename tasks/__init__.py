"""The lm-eval task configs of lm-eval-approx (installed as ``lm_eval_approx.tasks.configs``)."""
