"""What a leaderboard cell under the retraining rule costs, old path against new, side by side.

    python benchmarks/cell_cost.py [--k 32] [--pool 240] [--limit 100] [--work DIR]

Setup (not timed): a LoRA expert θf trained on 96 AG News train documents, and θf's pseudo-labels
of a pool of WikiText-2 + DBpedia candidates (a grid pays those once, not per cell).

The cell: SmolLM2-135M, target ``approx_agnews``, strategy random, seed 0, at two budgets (k and
k + 16), so that the second cell draws the same monitor texts as the first, as 6 of the 9 cells of
``agnews_rule`` do; retraining under the rule (``task_agreement`` on 64 unlabelled AG News train
texts, patience 2) capped at 3 epochs; scored by lm-eval on ``--limit`` test documents. The grid
runs twice, each in its own process, one after the other:

* old: the recipe without the fast fields and the probe caches switched off
  (``training/stop_signals.py`` ``CACHE_PROBES``);
* new: ``mixed_precision: bf16``, ``batch_order: bucketed``, ``dropout_sampler: fast`` and the caches.

Then, for one line per saving, the training loop alone runs on the first cell's selection, one
epoch, with each saving on its own against none (probes off, so the line is the loop's own); and
the probe set-up (θf loaded and scored on the monitor texts, θ0 scored) of a second cell, cached
against uncached. Prints ``<what>, old / new: N.NNx`` lines (time ratios: above 1 is faster) and
the cell cost line, ``cell cost, old / new``, from the two grids' recorded wall seconds per cell.
About 12 minutes on two idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BASE = "smollm2-135m"
TASK = "approx_agnews"
EXPERT_DOCS = 96
MONITOR = 64
EPOCHS = 3
FAST = {"mixed_precision": "bf16", "batch_order": "bucketed", "dropout_sampler": "fast"}
# One saving at a time in the training loop: the recipe fields that switch it on.
SAVINGS = {"bf16 autocast": {"mixed_precision": "bf16"}, "length-bucketed batches": {"batch_order": "bucketed"},
           "15-bit LoRA dropout": {"dropout_sampler": "fast"}, "all three": FAST}
# Cached stages a path computes for itself: removed before each path runs so neither reuses the other's.
PER_PATH_STAGES = ("selection", "training", "monitor_teacher", "probe_start")
RESULT_PREFIX = "RESULT "


def grid_config(work: Path, expert: Path, k: int, pool: int, limit: int, fast: bool) -> Path:
    import yaml

    recipe = {"micro_batch_size": 0}
    row = {"name": "random", "label": "cell", **({"recipe": dict(FAST)} if fast else {})}
    config = {
        "name": "cell-cost", "base": BASE, "task": TASK, "expert": {"adapter": str(expert)},
        "corpus": {"spec": "seed:wikitext2+seed:dbpedia", "size": pool, "seed": 0},
        "strategies": [row], "budgets": [k, k + 16], "seeds": [0], "seed_retraining": True, "limit": limit,
        "recipe": recipe, "device": "cpu", "batch_size": 16,
        "retraining": {"epochs": EPOCHS, "stop_on": "task_agreement", "patience": 2, "monitor_size": MONITOR},
    }
    path = work / ("new.yaml" if fast else "old.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def setup(work: Path, pool: int) -> Path:
    """θf (cached in ``work``) and its pseudo-labels of the pool (cached as a stage)."""
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.examples import task_examples
    from lm_eval_approx.training.loop import train_adapter
    from lm_eval_approx.training.recipe import TrainingRecipe

    spec = get_task_spec(TASK)
    expert = train_adapter(BASE, spec, task_examples(spec, EXPERT_DOCS, 1), TrainingRecipe(micro_batch_size=0),
                           work / "expert", progress=False)
    from lm_eval_approx.pipeline import ApproxConfig, run_selection

    run_selection(ApproxConfig(base=BASE, finetuned=str(expert), task=TASK, corpus="seed:wikitext2+seed:dbpedia",
                               corpus_size=pool, corpus_seed=0, strategy="random", k=8, seed=0))
    return expert


def run_grid(config: Path, out: Path, fast: bool) -> list[dict]:
    """The grid in a child process (its own Python, so neither path warms the other's caches)."""
    from lm_eval_approx.cache.paths import cache_dir

    for stage in PER_PATH_STAGES:
        shutil.rmtree(cache_dir() / "stages" / stage, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child-grid", str(config), "--out", str(out)] + ([] if fast else ["--old"])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cells = []
    for path in sorted((out / "results").glob("cell-*.json")):
        extras = json.loads(path.read_text())["config"]["leaderboard"]
        cells.append({"cell": extras["cell"], "wall": extras["wall_seconds"], "training": extras["training_seconds"],
                      "kept": extras.get("retraining", {}).get("kept_epoch")})
    return cells


def child_grid(config: str, out: str, old: bool) -> None:
    from lm_eval_approx import cli
    from lm_eval_approx.training import stop_signals

    stop_signals.CACHE_PROBES = not old
    # Only the approximation cells: θ0 and θf are scored alike on both paths and are no cell's cost.
    raise SystemExit(cli.main(["leaderboard", "--config", config, "--out", out, "--no-progress", "--only", "cell-*"]))


def loop_seconds(fields: dict) -> float:
    """The training loop alone (one epoch, no probes) on the first cell's selection."""
    from lm_eval_approx.data.selection_file import read_selection
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.loop import train_model
    from lm_eval_approx.training.recipe import TrainingRecipe
    import tempfile

    from lm_eval_approx.cache.paths import cache_dir

    # The selection lives in the stage cache (the smaller of the two cells' selections).
    rows = read_selection(min((cache_dir() / "stages" / "selection").glob("*/selection.jsonl"),
                              key=lambda path: len(path.read_text().splitlines())))
    recipe = TrainingRecipe(micro_batch_size=0, epochs=1, **fields)
    with tempfile.TemporaryDirectory() as folder:
        history = train_model(BASE, get_task_spec(TASK), rows, recipe, folder, progress=False).history
    return history.train_seconds


def probe_setup_seconds(expert: Path, cached: bool) -> float:
    """A second cell's probe set-up: θf's distribution and θ0's values on its monitor texts."""
    from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training import stop_signals
    from lm_eval_approx.training.history import TrainingHistory
    from lm_eval_approx.training.probes import record_probes
    from lm_eval_approx.training.recipe import TrainingRecipe

    spec = get_task_spec(TASK)
    recipe = TrainingRecipe(stop_on="task_agreement", monitor_size=MONITOR)
    texts = stop_signals.monitor_texts(spec, recipe, set())
    stop_signals.CACHE_PROBES = cached
    model, tokenizer = load_model(BASE), load_tokenizer(BASE)
    rounds = 2 if cached else 1  # cached: the first round fills the cache, the second is what a later cell pays
    for _ in range(rounds):
        began = time.perf_counter()
        probes = stop_signals.probes_for_texts(spec, recipe, texts, base=BASE, finetuned=str(expert))
        record_probes(TrainingHistory(), probes, model, tokenizer,
                       start=(model_fingerprint(BASE), recipe.mixed_precision))
        seconds = time.perf_counter() - began
    stop_signals.CACHE_PROBES = True
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=32, help="the first cell's budget (the second is k + 16)")
    parser.add_argument("--pool", type=int, default=240, help="candidate documents")
    parser.add_argument("--limit", type=int, default=100, help="AG News test documents scored per cell")
    parser.add_argument("--work", default="out/cell_cost", help="folder for θf, the grids and the cache")
    parser.add_argument("--child-grid", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_grid:
        child_grid(args.child_grid, args.out, args.old)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LM_EVAL_APPROX_CACHE", str(work / "cache"))
    expert = setup(work, args.pool)
    grids = {}
    for fast in (False, True):
        config = grid_config(work, expert, args.k, args.pool, args.limit, fast)
        grids[fast] = run_grid(config, work / ("new" if fast else "old"), fast)
    print(f"SmolLM2-135M, {TASK}, random at k = {args.k} and {args.k + 16} of {args.pool} candidates, rule capped at "
          f"{EPOCHS} epochs on {MONITOR} monitor texts, {args.limit} test documents per cell")
    for fast in (False, True):
        for cell in grids[fast]:
            print(f"  {'new' if fast else 'old'} {cell['cell']}: {cell['wall']:.0f} s "
                  f"(retraining {cell['training']:.0f} s, kept epoch {cell['kept']})")
    old_loop = loop_seconds({})
    for name, fields in SAVINGS.items():
        print(f"training loop, {name}, old / new: {old_loop / loop_seconds(fields):.2f}x",
              flush=True)
    uncached, cached = probe_setup_seconds(expert, False), probe_setup_seconds(expert, True)
    print(f"probe set-up of a later cell, uncached / cached: {uncached / cached:.2f}x "
          f"({uncached:.1f} s against {cached:.2f} s)")
    retraining = [sum(c["training"] for c in grids[fast]) for fast in (False, True)]
    print(f"retraining stage, old / new: {retraining[0] / retraining[1]:.2f}x")
    wall = [sum(c["wall"] for c in grids[fast]) / len(grids[fast]) for fast in (False, True)]
    print(f"cell cost, old / new: {wall[0] / wall[1]:.2f}x ({wall[0]:.0f} s against {wall[1]:.0f} s per cell)")


if __name__ == "__main__":
    main()
