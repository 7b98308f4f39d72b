"""``lm-eval-approx leaderboard``: compare selection strategies across budgets and seeds in one run.

    lm-eval-approx leaderboard --preset cpu-small --out out/demo --resume
    lm-eval-approx leaderboard --config grid.yaml --out out/grid --set budgets=[100,500]
    lm-eval-approx leaderboard --preset gpu --dry-run
    lm-eval-approx leaderboard --config grid.yaml --out out/grid --resume --dry-run   # what is left
    lm-eval-approx leaderboard --config grid.yaml --out out/grid --resume --only 'random-*' --only 'select-k100-*'
    lm-eval-approx leaderboard --show out/demo
    lm-eval-approx leaderboard --preset gpu --out out/gpu --workers 4      # 4 cells at a time, one GPU each
    lm-eval-approx leaderboard --config grid.yaml --out /shared/grid --executor ray --ray-address auto
    lm-eval-approx leaderboard --config grid.yaml --out /shared/grid --executor slurm --slurm-partition gpu

Writes every cell's lm-eval results JSON under OUT/results/, then leaderboard.md, leaderboard.csv,
the plots and leaderboard.html into OUT. Presets: tiny (needs --set base=PATH), cpu-small, cpu,
cpu-msmarco, gpu.

With --workers or --executor ray/slurm every cell runs in a process of its own (θf and θ0 first),
under a lock in OUT/.cells: workers, machines or whole runs sharing OUT never run a cell twice,
and stages cached in LM_EVAL_APPROX_CACHE (shared storage, for a cluster) are computed once.

A finished (or partial) grid is analysed by a subcommand, given instead of --config/--preset/--show:

    lm-eval-approx leaderboard compare --out OUT --row select_quota --against select   # Δ of two rows
    lm-eval-approx leaderboard gains --out OUT --row random --row select               # per-document gains
    lm-eval-approx leaderboard records --out OUT [--write]                             # kept epochs
"""

from __future__ import annotations

import argparse
import math
import sys

from lm_eval_approx.commands.leaderboard_analysis import ANALYSES, add_parsers
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.leaderboard.cluster_executors import DEFAULT_SLURM_MINUTES, RayExecutor, SlurmExecutor
from lm_eval_approx.leaderboard.config import TargetNotLoadedError
from lm_eval_approx.leaderboard.estimate import describe, estimate
from lm_eval_approx.leaderboard.executors import DEFAULT_RETRIES, LocalPool
from lm_eval_approx.leaderboard.html import HTML_FILE
from lm_eval_approx.models.devices import check_device_available
from lm_eval_approx.leaderboard.machine_probe import slowdown
from lm_eval_approx.leaderboard.outputs import write_outputs
from lm_eval_approx.leaderboard.report import CSV_FILE, MD_FILE, build_board, to_markdown
from lm_eval_approx.leaderboard.runner import finished_cells, run_leaderboard
from lm_eval_approx.leaderboard.sources import read_config

USAGE = ("%(prog)s (--config FILE | --preset NAME | --show DIR) [--out OUT] [options]\n"
         f"       %(prog)s {{{','.join(ANALYSES)}}} --out OUT [options]")


class NoGridError(ApproxError, ValueError):
    """``leaderboard`` was given neither a grid to run or show nor an analysis subcommand."""

    def __init__(self):
        super().__init__("give one of --config FILE, --preset NAME or --show DIR to run or show a grid, "
                         f"or a subcommand: {', '.join(ANALYSES)}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help="run a grid of strategies × budgets × seeds and tabulate it",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   usage=USAGE)
    # Not required here: an analysis subcommand needs none of them (leaderboard_command checks a run has one).
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="leaderboard YAML file")
    source.add_argument("--preset", metavar="NAME", help="a shipped preset: tiny, cpu-small, cpu, cpu-msmarco, gpu")
    source.add_argument("--show", metavar="DIR", help="print the table of a finished (or partial) run; computes nothing")
    parser.add_argument("--out", help="output folder (results/, tables, plots, leaderboard.html)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted for nesting; value read as YAML), repeatable")
    parser.add_argument("--resume", action="store_true", help="skip cells whose results JSON is already there")
    parser.add_argument("--dry-run", action="store_true", help="print the planned cells and estimated cost, run nothing; with --resume --out, "
                        "finished cells are marked done and left out of the estimate")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the cells whose id (e.g. select-k300-s0, theta0) matches this shell-style "
                        "pattern, repeatable; cells run in the order of the patterns; the tables cover every "
                        "finished cell")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = parser.add_argument_group("where the cells run")
    where.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                       help="local: this machine (in this process, or --workers processes); ray: Ray tasks; "
                       "slurm: SLURM job arrays through submitit")
    where.add_argument("--workers", type=int, metavar="N", help="local: N cells at a time, each in a fresh "
                       "process, pinned to one GPU each when there are GPUs; ray: the size in cells of the "
                       "local Ray cluster started; slurm: array tasks running at a time")
    where.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                       help="run a cell whose process died (killed, node lost) again up to N times")
    where.add_argument("--num-cpus", type=float, help="ray, slurm: CPUs per cell (default: the config's "
                       "resources.num_cpus, else 1)")
    where.add_argument("--num-gpus", type=float, help="ray, slurm: GPUs per cell (default: the config's "
                       "resources.num_gpus, else 1 when its device is cuda, else 0)")
    where.add_argument("--ray-address", help="ray: join this cluster (auto, or HOST:PORT); default: start a local one")
    where.add_argument("--slurm-partition", help="slurm: the partition")
    where.add_argument("--slurm-time", type=int, default=DEFAULT_SLURM_MINUTES, metavar="MINUTES",
                       help="slurm: the time limit of one cell's job")
    where.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm",
                       help="slurm: local runs the jobs as processes of this machine (submitit's local executor)")
    parser.set_defaults(func=leaderboard_command)
    # Optional subcommands: without one, the options above run (or show) a grid as they always did.
    add_parsers(parser.add_subparsers(dest="analysis", metavar="{" + ",".join(ANALYSES) + "}", prog=parser.prog,
                                      title="analysis of a finished grid (reads results/, runs no model)"))


def make_executor(args: argparse.Namespace, config=None):
    """The executor the flags ask for; None: the cells run in this process, one after another. A
    cluster cell asks for the CPUs and GPUs of ``--num-cpus`` / ``--num-gpus``, else of the config's
    ``resources``."""
    for flag, value in (("--workers", args.workers), ("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus),
                        ("--slurm-time", args.slurm_time)):
        if value is not None and value <= 0 and not (flag == "--num-gpus" and value == 0):
            raise ConfigError(flag, value, "a positive number")
    if args.retries < 0:
        raise ConfigError("--retries", args.retries, "0 or more")
    if args.ray_address and args.executor != "ray":
        raise ConfigError("--ray-address", args.ray_address, "only with --executor ray")
    flags = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    resources = {**(config.resources if config is not None else {}), **{k: v for k, v in flags.items() if v is not None}}
    cpus, gpus = resources.get("num_cpus", 1), resources.get("num_gpus")
    if args.executor == "ray":
        return RayExecutor(args.workers, args.retries, cpus, gpus, args.ray_address)
    if args.executor == "slurm":
        return SlurmExecutor(args.workers, args.retries, math.ceil(cpus), None if gpus is None else math.ceil(gpus),
                             args.slurm_partition, args.slurm_time, args.slurm_cluster)
    return None if args.workers is None else LocalPool(args.workers, args.retries)


# What a person who just ran a leaderboard needs next: where the outputs are, how to read the
# two columns that carry the claim, and what to run after it.
READING = """\
How to read it: "gap closed vs random" is (row − random) / (expert − random) at the same k and
recipe: 0% is no better than random documents of the pool, 100% recreates the expert. "Δ vs random
[95% CI]" is the row minus random on the same test documents with a paired bootstrap interval
(each row's seeds resampled, then the documents; ¹ marks a documents-only interval where a side
has one seed): the row beats random when the whole interval is above 0 (below 0 for a perplexity).
"knew" says what each row knew of the target: weights, task texts or true data."""
NEXT = {
    "cpu-small": "lm-eval-approx leaderboard --preset cpu --out out/cpu --resume   (the larger grid; "
                 "add --dry-run first for its estimate)",
}
NEXT_DEFAULT = ("approximate a finetune of your own task: README, \"Bring your own task\" "
                "(finetune --task T, then --model approx with --include_path)")


def reading_guide(out, name: str) -> str:
    """Where the outputs of ``out`` are, how to read the claim columns, and the next command."""
    from pathlib import Path

    folder = Path(out)
    plots = sorted(p.name for p in folder.glob("*.png"))
    lines = [f"Wrote {folder / HTML_FILE} (open it in a browser), {folder / MD_FILE}, {folder / CSV_FILE}"
             + (f" and the plots {', '.join(plots)}" if plots else "") + f"; per-cell lm-eval results in {folder / 'results'}.",
             READING, f"Next: {NEXT.get(name, NEXT_DEFAULT)}"]
    if name in NEXT:
        lines.append(f"  or {NEXT_DEFAULT}")
    return "\n".join(lines) + "\n"


# Two 2-core CPU machines ran the same `make demo` in 13 and 26 minutes (README, "Timings from a
# fresh clone"): the rates are the faster one's, so the estimate says how far off it can be.
def on_this_machine(config, seconds: float) -> str:
    """The estimate in this machine's minutes: CPU rates scaled by a timing probe against the
    machine they were measured on (``leaderboard/machine_probe.py``); a GPU figure stays an
    assumed speed-up."""
    if config.device != "cpu":
        return f"{seconds / 60:.0f} min (a GPU speed-up assumed, not measured)"
    factor = slowdown()
    return (f"{seconds * factor / 60:.0f} min on this machine (a timing probe ran {factor:.1f}x as long here "
            f"as on the 2-core machine the rates come from, where it is {seconds / 60:.0f} min)")


def upfront_cost(config, args: argparse.Namespace) -> str:
    """One line said before anything runs: the cells left and their estimated wall time."""
    done = finished_cells(args.out, config, args.only) if args.resume else frozenset()
    est = estimate(config, done, args.only)
    left = [cell for cell in est.cells if cell not in done]
    unknown = " + parts it cannot estimate" if est.unknown else ""
    return (f"leaderboard {config.name!r}: {len(left)} of {len(est.cells)} cells to run, estimated "
            f"{on_this_machine(config, est.total)}{unknown}; --dry-run shows the parts")


def dry_run(config, args: argparse.Namespace) -> str:
    """The ``--dry-run`` text: the planned cells, those finished (``--resume --out``) and the cost,
    from the resolved config; when the target task is known but does not load here (its data
    missing), the cells alone and why the rest is not there."""
    try:
        config = config.resolve()
    except TargetNotLoadedError as exc:
        return plan_without_task(config, args.only, exc)
    done = finished_cells(args.out, config, args.only) if args.resume and args.out else frozenset()
    text = describe(config, done, args.only)
    if config.device == "cpu":
        text += f"\n  {on_this_machine(config, estimate(config, done, args.only).total)}"
    return text


def plan_without_task(config, only: list[str] | None, error: TargetNotLoadedError) -> str:
    """The planned cells of an unresolved config, and what a dry run cannot say without its task."""
    cells = config.chosen_cells(only)
    count = f"{len(cells)} of {len(config.cells())} cells (--only)" if only else f"{len(cells)} cells"
    return "\n".join([
        f"leaderboard {config.name!r}: {count} on {config.device}", *(f"  {cell.id}" for cell in cells),
        f"not checked without the target task {config.task!r}: which cells are finished (--resume) and the cost",
        "  (lm-eval loads a task with its data; a cell's hash records the task's prompt, and the retraining",
        "  rule and the rates follow the task's kind and training split)",
        f"  loading it failed: {error.accepted}"])


def leaderboard_command(args: argparse.Namespace) -> int:
    if not (args.config or args.preset or args.show):
        raise NoGridError
    if args.show:
        print(to_markdown(build_board(args.show)), end="", file=sys.stdout)
        return 0
    config = read_config(args.config, args.preset, args.overrides)
    if args.dry_run:
        print(dry_run(config, args), file=sys.stdout)
        return 0
    if not args.out:
        raise ConfigError("--out", None, "an output folder for the results, tables and page")
    executor = make_executor(args, config)
    if args.executor == "local":  # a cluster's driver may have no GPU: its cells check where they run
        check_device_available("device", config.device)
    config = config.resolve()
    print(upfront_cost(config, args), file=sys.stderr, flush=True)
    run_leaderboard(config, args.out, resume=args.resume, progress=not args.no_progress, only=args.only,
                    executor=executor)
    print(write_outputs(args.out), end="", file=sys.stdout)
    print("\n" + reading_guide(args.out, config.name), end="", file=sys.stderr)
    return 0
