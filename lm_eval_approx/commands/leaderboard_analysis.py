"""``lm-eval-approx leaderboard compare | gains | records | verdict``: read a finished (or partial) grid's
results JSONs and compute nothing new on a model.

    lm-eval-approx leaderboard compare --out OUT --row select_quota --against select
    lm-eval-approx leaderboard gains --out OUT --row random --row select [--row OTHER_OUT:LABEL]
    lm-eval-approx leaderboard records --out OUT [--write]
    lm-eval-approx leaderboard verdict --out OUT --row select_quota --baseline random --baseline gen_knn [--write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lm_eval_approx.leaderboard import document_gains, paired_rows, retraining_records, verdict
from lm_eval_approx.leaderboard.outputs import write_outputs

COMPARE, GAINS, RECORDS, VERDICT = "compare", "gains", "records", "verdict"
ANALYSES = (COMPARE, GAINS, RECORDS, VERDICT)
DEFAULT_METRIC = "acc"
METRIC_HELP = "the metric whose per-document scores are read (e.g. word_perplexity); default: acc"


def add_parsers(subparsers) -> None:
    """The four analysis subcommands, under ``leaderboard``."""
    raw = argparse.RawDescriptionHelpFormatter
    compare = subparsers.add_parser(COMPARE, help="two rows on the same documents: Δ with its paired bootstrap "
                                    "interval, over shared seeds and per seed", description=paired_rows.__doc__,
                                    formatter_class=raw)
    compare.add_argument("--out", type=Path, required=True, help="a leaderboard output folder (with results/)")
    compare.add_argument("--row", required=True, help="strategy label of the row")
    compare.add_argument("--against", required=True, help="strategy label of the reference row")
    compare.add_argument("--k", type=int, default=None,
                         help="budget (default: every budget; give it when a row has several)")
    compare.add_argument("--metric", default=DEFAULT_METRIC, help=METRIC_HELP)
    compare.add_argument("--against-out", type=Path, default=None, help="the leaderboard folder of the --against "
                         "row (default: --out), scored on the same documents")
    compare.add_argument("--all-seeds", action="store_true",
                         help="pair each row's mean over all its seeds, not only the seeds both rows finished")
    compare.set_defaults(func=compare_command)

    gains = subparsers.add_parser(GAINS, help="each row's per-document gain over θ0 against the expert's",
                                  description=document_gains.__doc__, formatter_class=raw)
    gains.add_argument("--out", type=Path, required=True, help="a leaderboard output folder (with results/)")
    gains.add_argument("--row", action="append", required=True,
                       help="strategy label of a row, or FOLDER:LABEL for a row of another folder (repeatable)")
    gains.add_argument("--metric", default=DEFAULT_METRIC, help=METRIC_HELP)
    gains.add_argument("--base", default=document_gains.BASE, help="label of the row gains are measured from (θ0)")
    gains.add_argument("--reference", default=document_gains.REFERENCE,
                       help="label of the row whose gain is the target (θf)")
    gains.set_defaults(func=gains_command)

    records = subparsers.add_parser(RECORDS, help="what the retraining rule kept in every cell, with its signal curve",
                                    description=retraining_records.__doc__, formatter_class=raw)
    records.add_argument("--out", required=True, type=Path, help="a leaderboard output folder")
    records.add_argument("--write", action="store_true",
                         help="add the record to results JSONs saved without one, then regenerate the tables")
    records.set_defaults(func=records_command)

    judged = subparsers.add_parser(VERDICT, help="do the rows beat every baseline, and at what selection cost: "
                                   "a Markdown table of Δ intervals and cost ratios, one verdict line per row",
                                   description=verdict.__doc__, formatter_class=raw)
    judged.add_argument("--out", type=Path, required=True, help="a leaderboard output folder (with results/)")
    judged.add_argument("--row", action="append", required=True,
                        help="strategy label of a row to judge, fixed before reading its score (repeatable)")
    judged.add_argument("--baseline", action="append", required=True,
                        help="strategy label of a baseline every row must beat, e.g. random, gen_knn, rds, dsir "
                        "(repeatable; a label the grid planned but has not finished is left out, in a note)")
    judged.add_argument("--k", type=int, default=None,
                        help="budget (default: the one budget the rows and baselines were run at)")
    judged.add_argument("--metric", default=DEFAULT_METRIC, help=METRIC_HELP +
                        "; its direction (lower is better for a perplexity) comes from the results")
    judged.add_argument("--write", action="store_true", help=f"also write the text to OUT/{verdict.VERDICT_FILE}")
    judged.set_defaults(func=verdict_command)


def compare_command(args: argparse.Namespace) -> int:
    for line in paired_rows.compare_rows(args.out, args.row, args.against, k=args.k, metric=args.metric,
                                         against_out=args.against_out, all_seeds=args.all_seeds):
        print(line)
    return 0


def gains_command(args: argparse.Namespace) -> int:
    print(document_gains.gains_table(args.out, args.row, metric=args.metric, base=args.base,
                                     reference=args.reference))
    return 0


def records_command(args: argparse.Namespace) -> int:
    lines, written = retraining_records.retraining_records(args.out, write=args.write)
    for line in lines:
        print(line)
    if args.write:
        write_outputs(args.out)
        print(f"{written} results JSONs given a retraining record; tables regenerated in {args.out}")
    return 0


def verdict_command(args: argparse.Namespace) -> int:
    text = verdict.verdict(args.out, args.row, args.baseline, k=args.k, metric=args.metric)
    print(text, end="")
    if args.write:
        print(f"written to {verdict.write_verdict(args.out, text)}")
    return 0
