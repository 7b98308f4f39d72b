"""Kept so the commands recorded in results/cpu/COMMANDS.md still run: the analysis is
`lm-eval-approx leaderboard gains` (`lm_eval_approx/leaderboard/document_gains.py`), which takes the same options."""

import sys

from lm_eval_approx.cli import main

if __name__ == "__main__":
    sys.exit(main(["leaderboard", "gains", *sys.argv[1:]]))
