"""``lm-eval-approx run ARGS...``: lm-eval's own ``run`` with our plugins loaded.

Every lm-eval flag works unchanged; our task folders are visible without ``--include_path``, the
model types ``approx`` and ``approx_hf`` are registered, and model aliases such as
``pretrained=smollm2-135m`` are resolved to local folders before lm-eval sees them.
"""

from __future__ import annotations

import argparse
import sys

from lm_eval_approx.harness.lm_eval_cli import (
    include_paths,
    prepare_lm_eval,
    rewrite_argv,
)
from lm_eval_approx.plugins.registry import include_task_folders


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run lm-eval (every lm_eval flag works) with lm-eval-approx's tasks and models",
        description=__doc__,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm_eval run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_lm_eval(list(args.lm_eval_args))


def run_lm_eval(lm_eval_args: list[str]) -> int:
    """Hand the arguments to lm-eval's CLI after preparing it; returns its exit code."""
    from lm_eval.__main__ import (
        cli_evaluate,  # lm-eval loads every model type: only when running it
    )

    prepare_lm_eval()
    # The folders lm-eval's run sees are the folders the approx model's target task resolves in.
    include_task_folders(include_paths(lm_eval_args))
    saved = sys.argv
    sys.argv = ["lm-eval-approx run", "run", *rewrite_argv(lm_eval_args)]
    try:
        cli_evaluate()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0
