"""The ``lm-eval-approx`` command: subcommands come from the ``register_commands`` hook."""

from __future__ import annotations

import argparse
import logging
import sys

from lm_eval_approx import __version__
from lm_eval_approx.errors import ApproxError
from lm_eval_approx.plugins.manager import call_each
from lm_eval_approx.quiet import quiet_libraries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lm-eval-approx",
        description=(
            "Approximate a finetune's training data from its weights (SELECT), retrain on it, and "
            "score the result inside lm-evaluation-harness."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lm-eval-approx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level, and show the known-benign warnings and progress bars of the "
                             "libraries underneath (lm-eval, transformers, peft) that are hidden by default")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    call_each("register_commands", lambda plugin: subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `run` hands everything after it to lm-eval untouched; argparse would claim lm-eval's flags.
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "command", None) != "run":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "command", None) == "run":
        args.lm_eval_args = argv[argv.index("run") + 1 :]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with quiet_libraries(args.verbose):
            return int(args.func(args) or 0)
    except ApproxError as exc:
        print(f"lm-eval-approx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
