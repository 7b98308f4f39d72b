"""Kept so the commands recorded in results/cpu/COMMANDS.md still run: the analysis is
`lm-eval-approx leaderboard records` (`lm_eval_approx/leaderboard/retraining_records.py`), which takes the same options."""

import sys

from lm_eval_approx.cli import main

if __name__ == "__main__":
    sys.exit(main(["leaderboard", "records", *sys.argv[1:]]))
