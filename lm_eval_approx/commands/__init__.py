"""Built-in subcommands of lm-eval-approx, one module each."""
