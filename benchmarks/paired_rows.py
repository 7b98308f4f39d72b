"""Kept so the commands recorded in results/cpu/COMMANDS.md still run: the analysis is
`lm-eval-approx leaderboard compare` (`lm_eval_approx/leaderboard/paired_rows.py`), which takes the same options."""

import sys

from lm_eval_approx.cli import main

if __name__ == "__main__":
    sys.exit(main(["leaderboard", "compare", *sys.argv[1:]]))
