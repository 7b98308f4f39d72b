"""lm-eval task folders of lm-eval-approx (installed as lm_eval_approx.tasks)."""
